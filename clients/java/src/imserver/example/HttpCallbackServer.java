package imserver.example;

import static java.nio.charset.StandardCharsets.UTF_8;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The app's {@code callback_url}: receives the server's signed {@code POST}s (docs/cards.md
 * section 6), refuses any it cannot verify with {@code 401}, and answers a genuine one with
 * {@code 200} and the {@code card_update} to apply. Non-2xx makes the server retry, so a
 * refusal of a forged request costs the genuine flow nothing.
 */
public final class HttpCallbackServer {
    private final HttpServer server;
    private final ExecutorService workers = Executors.newFixedThreadPool(8);
    private final CallbackVerifier verifier;
    private final Decisions decisions;
    private final long stallFirstMs;
    private boolean stalled;

    /**
     * @param stallFirstMs delay the answer to the first delivery by this long (0: never); with
     *     more than {@code cards.callback_timeout_s} the server times out and redelivers it,
     *     which shows the repeat being dropped
     */
    public HttpCallbackServer(String host, int port, CallbackVerifier verifier, Decisions decisions,
            long stallFirstMs) throws IOException {
        this.verifier = verifier;
        this.decisions = decisions;
        this.stallFirstMs = stallFirstMs;
        this.server = HttpServer.create(new InetSocketAddress(host, port), 0);
        server.createContext("/callback", this::handle);
        server.setExecutor(workers); // deliveries may overlap: a retry can arrive mid-answer
    }

    public void start() {
        server.start();
    }

    public void stop() {
        server.stop(0);
        workers.shutdownNow();
    }

    /** The URL to register as the app's {@code callback_url}. */
    public String url() {
        InetSocketAddress a = server.getAddress();
        return "http://" + a.getHostString() + ":" + a.getPort() + "/callback";
    }

    private void handle(HttpExchange ex) throws IOException {
        try (ex) {
            if (!"POST".equals(ex.getRequestMethod())) {
                reply(ex, 405, Json.obj("error", "POST only"));
                return;
            }
            byte[] body;
            try (InputStream in = ex.getRequestBody()) {
                body = in.readAllBytes(); // the raw bytes: what the signature covers
            }
            Map<String, String> headers = new TreeMap<>(String.CASE_INSENSITIVE_ORDER);
            for (Map.Entry<String, List<String>> h : ex.getRequestHeaders().entrySet()) {
                headers.put(h.getKey(), h.getValue().get(0));
            }
            String refusal = verifier.refusal(headers, body);
            if (refusal != null) {
                Out.line("REFUSED", refusal, "http");
                reply(ex, 401, Json.obj("error", refusal));
                return;
            }
            Map<String, Object> answer = decisions.onDelivery(
                    Json.parseObject(new String(body, UTF_8)), "http");
            if (stallFirst()) {
                Thread.sleep(stallFirstMs);
            }
            reply(ex, 200, answer);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (RuntimeException e) { // e.g. a body that is not JSON: 400, and it is retried
            Out.line("BAD_DELIVERY", String.valueOf(e.getMessage()).replace(' ', '_'), "http");
            reply(ex, 400, Json.obj("error", "bad body"));
        }
    }

    private synchronized boolean stallFirst() {
        boolean now = stallFirstMs > 0 && !stalled;
        stalled = true;
        return now;
    }

    private static void reply(HttpExchange ex, int status, Map<String, Object> body) throws IOException {
        byte[] bytes = Json.write(body).getBytes(UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json");
        try {
            ex.sendResponseHeaders(status, bytes.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(bytes);
            }
        } catch (IOException e) {
            Out.line("ANSWER_LOST", status, "http"); // the server gave up waiting: it will retry
        }
    }
}
