package imserver.example;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.Map;

/**
 * Signed requests of a business system to imserver's app API (docs/cards.md sections 2-6).
 *
 * <p>Every request is signed afresh — a new timestamp and nonce — including a retry after
 * {@code 429 rate_limited} or {@code 503}, because the server records a nonce even when it
 * then refuses the request for the budget.
 */
public final class AppClient {
    private static final int MAX_TRIES = 4;

    private final String baseUrl;
    private final String appId;
    private final String secret;
    private final HttpClient http;

    /** A refusal: the HTTP status and the stable {@code error.code} to branch on. */
    public static final class ApiException extends IOException {
        private static final long serialVersionUID = 1L;
        public final int status;
        public final String code;
        public final String field;

        ApiException(int status, String code, String message, String field) {
            super(status + " " + code + ": " + message + (field == null ? "" : " (" + field + ")"));
            this.status = status;
            this.code = code;
            this.field = field;
        }
    }

    /** @param baseUrl the server's HTTP port, e.g. {@code http://127.0.0.1:8701} */
    public AppClient(String baseUrl, String appId, String secret) {
        this.baseUrl = baseUrl.replaceAll("/+$", "");
        this.appId = appId;
        this.secret = secret;
        this.http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1) // the server speaks HTTP/1.1
                .connectTimeout(Duration.ofSeconds(5))
                .build();
    }

    public String baseUrl() {
        return baseUrl;
    }

    public HttpClient http() {
        return http;
    }

    /** {@code POST /api/v1/apps/cards}: → {@code {"card_id", "version", "duplicate", ...}}. */
    public Map<String, Object> pushCard(Map<String, Object> card, Map<String, Object> to)
            throws IOException, InterruptedException {
        return send("POST", "/api/v1/apps/cards", Json.obj("card", card, "to", to));
    }

    /** {@code GET /api/v1/apps/cards/<out_track_id>}: the card, unmasked, with its version. */
    public Map<String, Object> getCard(String outTrackId) throws IOException, InterruptedException {
        return send("GET", "/api/v1/apps/cards/" + encode(outTrackId), null);
    }

    /** {@code PATCH /api/v1/apps/cards/<out_track_id>}; {@code if_version} in it makes it conditional. */
    public Map<String, Object> updateCard(String outTrackId, Map<String, Object> update)
            throws IOException, InterruptedException {
        return send("PATCH", "/api/v1/apps/cards/" + encode(outTrackId), update);
    }

    /** One signed request; the parsed JSON answer, or {@link ApiException} with its code. */
    public Map<String, Object> send(String method, String path, Object body)
            throws IOException, InterruptedException {
        // Serialise once: the signature is over exactly these bytes.
        byte[] bytes = body == null ? new byte[0] : Json.write(body).getBytes(UTF_8);
        for (int attempt = 1; ; attempt++) {
            HttpRequest.Builder req = HttpRequest.newBuilder(URI.create(baseUrl + path))
                    .timeout(Duration.ofSeconds(10))
                    .method(method, body == null
                            ? HttpRequest.BodyPublishers.noBody()
                            : HttpRequest.BodyPublishers.ofByteArray(bytes));
            Signing.headers(appId, secret, bytes).forEach(req::header);
            if (body != null) {
                req.header("Content-Type", "application/json");
            }
            HttpResponse<String> resp = http.send(req.build(), HttpResponse.BodyHandlers.ofString(UTF_8));
            int status = resp.statusCode();
            Map<String, Object> answer = resp.body().isBlank() ? Map.of() : Json.parseObject(resp.body());
            if (status >= 200 && status < 300) {
                return answer;
            }
            ApiException refusal = refusal(status, answer);
            if ((status == 429 || status == 503) && attempt < MAX_TRIES) {
                Thread.sleep(retryAfterMs(resp, answer));
                continue; // signed again, with a new nonce, at the top of the loop
            }
            throw refusal;
        }
    }

    private static ApiException refusal(int status, Map<String, Object> answer) {
        Object err = answer.get("error");
        if (err instanceof Map<?, ?> e) {
            return new ApiException(status, String.valueOf(e.get("code")),
                    String.valueOf(e.get("message")), (String) e.get("field"));
        }
        return new ApiException(status, "http_" + status, "no JSON error body", null);
    }

    /** {@code error.details.retry_after_ms} if given, else {@code Retry-After} seconds. */
    private static long retryAfterMs(HttpResponse<String> resp, Map<String, Object> answer) {
        if (answer.get("error") instanceof Map<?, ?> e
                && e.get("details") instanceof Map<?, ?> d
                && d.get("retry_after_ms") instanceof Long ms) {
            return ms;
        }
        return 1000L * resp.headers().firstValue("Retry-After").map(Long::parseLong).orElse(1L);
    }

    private static String encode(String segment) {
        return URLEncoder.encode(segment, UTF_8).replace("+", "%20");
    }
}
