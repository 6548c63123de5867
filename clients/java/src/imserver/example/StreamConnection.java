package imserver.example;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.WebSocket;
import java.net.http.WebSocketHandshakeException;
import java.time.Duration;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * Stream mode (docs/cards.md "Stream mode"): the app opens an outbound WebSocket to
 * {@code GET /api/v1/stream} and receives its callbacks on it — for an OA system inside an
 * intranet that cannot expose a {@code callback_url}.
 *
 * <p>The handshake is signed like any app request over the empty body. Each {@code callback}
 * frame is verified exactly as an HTTP callback (its {@code headers}, over the UTF-8 bytes of
 * its {@code body} string), then answered by the frame's {@code id} with {@code ack} (and the
 * {@code card_update}) or {@code nack}. The connection is kept up: after a drop, reconnect
 * with backoff (0.5 s doubling to 30 s, with jitter); unacknowledged items are redelivered.
 */
public final class StreamConnection implements WebSocket.Listener {
    private final AppClient app;
    private final String appId;
    private final String secret;
    private final CallbackVerifier verifier;
    private final Decisions decisions;
    private final long stallFirstMs;
    private final ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor(r -> {
        Thread t = new Thread(r, "stream-timer");
        t.setDaemon(true);
        return t;
    });
    private final Random jitter = new Random();
    private final StringBuilder partial = new StringBuilder();
    private CompletableFuture<?> sending = CompletableFuture.completedFuture(null);
    private volatile CompletableFuture<Integer> closed = new CompletableFuture<>();
    private final CompletableFuture<Void> firstHello = new CompletableFuture<>();
    private volatile boolean stopping;
    private volatile WebSocket socket;
    private boolean stalled;

    public StreamConnection(AppClient app, String appId, String secret, CallbackVerifier verifier,
            Decisions decisions, long stallFirstMs) {
        this.app = app;
        this.appId = appId;
        this.secret = secret;
        this.verifier = verifier;
        this.decisions = decisions;
        this.stallFirstMs = stallFirstMs;
    }

    /** Connects and keeps reconnecting (in a background thread) until {@link #stop()}. */
    public void start() {
        Thread t = new Thread(this::runForever, "stream");
        t.setDaemon(true);
        t.start();
    }

    /** Completes when the server's first {@code hello} arrived: the stream is registered. */
    public CompletableFuture<Void> ready() {
        return firstHello;
    }

    public void stop() {
        stopping = true;
        WebSocket ws = socket;
        if (ws != null) {
            ws.sendClose(WebSocket.NORMAL_CLOSURE, "bye");
        }
    }

    private void runForever() {
        double backoffS = 0.5;
        while (!stopping) {
            try {
                closed = new CompletableFuture<>();
                socket = connect();
                backoffS = 0.5; // connected: the next drop starts the backoff again
                int code = closed.join();
                Out.line("STREAM_CLOSED", code);
            } catch (CompletionException e) {
                if (e.getCause() instanceof WebSocketHandshakeException h) {
                    int status = h.getResponse().statusCode();
                    Out.line("STREAM_REFUSED", status, errorCode(h.getResponse().body()));
                    if (status == 401 || status == 400) { // wrong secret, clock or app id:
                        firstHello.completeExceptionally( // retrying will not fix it
                                new IllegalStateException("stream handshake refused: " + status));
                        return;
                    }
                } else {
                    Out.line("STREAM_CONNECT_FAILED", e.getCause().getClass().getSimpleName());
                }
            }
            if (stopping) {
                return;
            }
            long sleepMs = (long) (1000 * backoffS * (0.5 + jitter.nextDouble() / 2));
            backoffS = Math.min(30, backoffS * 2);
            try {
                Thread.sleep(sleepMs);
            } catch (InterruptedException e) {
                return;
            }
        }
    }

    /** The {@code error.code} of a refused handshake's JSON body (docs/cards.md section 2). */
    private static Object errorCode(Object body) {
        try {
            return ((Map<?, ?>) Json.parseObject(String.valueOf(body)).get("error")).get("code");
        } catch (RuntimeException e) {
            return "no_json_body";
        }
    }

    private WebSocket connect() {
        String ws = app.baseUrl().replaceFirst("^http", "ws") + "/api/v1/stream"; // https → wss
        WebSocket.Builder b = app.http().newWebSocketBuilder().connectTimeout(Duration.ofSeconds(5));
        // A fresh signature for every handshake (a nonce is good once), over the empty body.
        Signing.headers(appId, secret, new byte[0]).forEach(b::header);
        return b.buildAsync(URI.create(ws), this).join();
    }

    @Override
    public void onOpen(WebSocket ws) {
        partial.setLength(0); // nothing of a frame cut off by the last drop
        ws.request(1);
    }

    @Override
    public CompletionStage<?> onText(WebSocket ws, CharSequence data, boolean last) {
        partial.append(data); // a frame may arrive in several parts
        if (last) {
            String text = partial.toString();
            partial.setLength(0);
            try {
                onFrame(ws, Json.parseObject(text));
            } catch (RuntimeException e) {
                Out.line("STREAM_BAD_FRAME", String.valueOf(e.getMessage()).replace(' ', '_'));
            }
        }
        ws.request(1);
        return null;
    }

    @Override
    public CompletionStage<?> onClose(WebSocket ws, int statusCode, String reason) {
        closed.complete(statusCode); // 1012: the server restarts; reconnect to any node
        return null;
    }

    @Override
    public void onError(WebSocket ws, Throwable error) {
        Out.line("STREAM_ERROR_IO", error.getClass().getSimpleName());
        closed.complete(1006);
    }

    @SuppressWarnings("unchecked")
    private void onFrame(WebSocket ws, Map<String, Object> frame) {
        switch (String.valueOf(frame.get("type"))) {
            case "hello" -> {
                Out.line("STREAM_HELLO", frame.get("app_id"), frame.get("heartbeat_s"));
                firstHello.complete(null);
            }
            case "callback" -> onCallback(ws, frame);
            case "error" -> Out.line("STREAM_ERROR", frame.get("code"), frame.get("id"));
            default -> Out.line("STREAM_UNKNOWN", frame.get("type"));
        }
    }

    @SuppressWarnings("unchecked")
    private void onCallback(WebSocket ws, Map<String, Object> frame) {
        String id = String.valueOf(frame.get("id"));
        Map<String, String> headers = new TreeMap<>(String.CASE_INSENSITIVE_ORDER);
        if (frame.get("headers") instanceof Map<?, ?> h) {
            h.forEach((k, v) -> headers.put(String.valueOf(k), String.valueOf(v)));
        }
        String body = frame.get("body") instanceof String s ? s : "";
        // The exact signed bytes: the body string as sent, never the object re-serialised.
        String refusal = verifier.refusal(headers, body.getBytes(UTF_8));
        if (refusal != null) {
            Out.line("REFUSED", refusal, "stream");
            send(ws, Json.write(Json.obj("type", "nack", "id", id, "error", "refused: " + refusal)));
            return;
        }
        Map<String, Object> answer = decisions.onDelivery(Json.parseObject(body), "stream");
        Map<String, Object> ack = Json.obj("type", "ack", "id", id);
        if (answer.get("card_update") != null) {
            ack.put("card_update", answer.get("card_update"));
        }
        String text = Json.write(ack);
        if (stallFirst()) { // answer after the server's timeout: it redelivers under a new id
            timer.schedule(() -> send(ws, text), stallFirstMs, TimeUnit.MILLISECONDS);
        } else {
            send(ws, text);
        }
    }

    private synchronized boolean stallFirst() {
        boolean now = stallFirstMs > 0 && !stalled;
        stalled = true;
        return now;
    }

    /** One text frame at a time: java.net.http.WebSocket refuses overlapping sends. */
    private synchronized void send(WebSocket ws, String text) {
        sending = sending.handle((r, e) -> null).thenCompose(x -> ws.sendText(text, true));
    }
}
