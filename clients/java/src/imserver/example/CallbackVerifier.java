package imserver.example;

import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.regex.Pattern;

/**
 * Checks a delivery from the server before its body is trusted (docs/cards.md sections 2, 6
 * and "Stream mode"): the app id, the header shapes, the signature with the current secret
 * (or, during a rotation's overlap, the previous one), the timestamp window and that the nonce
 * is new. One routine serves both transports: an HTTP callback's headers and body, or a stream
 * frame's {@code headers} and {@code body} string.
 */
public final class CallbackVerifier {
    private static final Pattern TS = Pattern.compile("[0-9]{1,15}");
    private static final Pattern NONCE = Pattern.compile("[A-Za-z0-9_-]{16,64}");
    private static final Pattern SIG = Pattern.compile("[0-9a-fA-F]{64}");

    private final String appId;
    private final List<String> secrets;
    private final long windowS;
    /** Nonce → the second after which its timestamp alone refuses it, so it can be forgotten. */
    private final Map<String, Long> seenNonces = new ConcurrentHashMap<>();

    /**
     * @param secrets the current secret first; add the previous one while a rotation's
     *     overlap runs (docs/admin.md section 7), since the server signs with the new one at once
     * @param windowS the server's {@code cards.signature_window_s} (300 by default)
     */
    public CallbackVerifier(String appId, List<String> secrets, long windowS) {
        this.appId = appId;
        this.secrets = List.copyOf(secrets);
        this.windowS = windowS;
    }

    /** The reason to refuse the delivery, or {@code null} when it is genuine and new. */
    public String refusal(Map<String, String> headers, byte[] body) {
        String app = headers.get("X-Imserver-App");
        String ts = headers.get("X-Imserver-Timestamp");
        String nonce = headers.get("X-Imserver-Nonce");
        String sig = headers.get("X-Imserver-Signature");
        if (!appId.equals(app)) {
            return "unknown_app";
        }
        if (ts == null || !TS.matcher(ts).matches()) {
            return "bad_timestamp";
        }
        if (nonce == null || !NONCE.matcher(nonce).matches()) {
            return "bad_nonce";
        }
        if (sig == null || !SIG.matcher(sig).matches()) {
            return "bad_signature";
        }
        boolean signed = false;
        for (String secret : secrets) {
            signed |= Signing.sameSignature(
                    Signing.signature(secret, ts, nonce, body), sig.toLowerCase());
        }
        if (!signed) {
            return "bad_signature";
        }
        long now = System.currentTimeMillis() / 1000;
        long at = Long.parseLong(ts);
        if (Math.abs(now - at) > windowS) {
            return "signature_expired";
        }
        forgetExpired(now);
        if (seenNonces.putIfAbsent(nonce, at + windowS) != null) {
            return "nonce_replayed";
        }
        return null;
    }

    private void forgetExpired(long now) {
        for (Iterator<Long> it = seenNonces.values().iterator(); it.hasNext(); ) {
            if (it.next() < now) {
                it.remove();
            }
        }
    }
}
