package imserver.example;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Map;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * The app signature of docs/cards.md section 2, both directions.
 *
 * <p>{@code X-Imserver-Signature} is lowercase hex HMAC-SHA256, keyed with the app's secret,
 * over the bytes {@code timestamp + "\n" + nonce + "\n" + body}. The body is the exact bytes
 * sent: sign the byte array you then send, never a string you serialise again.
 */
public final class Signing {
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final String NONCE_CHARS =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

    private Signing() {}

    /** Hex HMAC-SHA256 of {@code ts \n nonce \n body} with {@code secret}. */
    public static String signature(String secret, String ts, String nonce, byte[] body) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(secret.getBytes(UTF_8), "HmacSHA256"));
            mac.update((ts + "\n" + nonce + "\n").getBytes(UTF_8));
            return HexFormat.of().formatHex(mac.doFinal(body));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 is part of every JDK", e);
        }
    }

    /** A fresh nonce: 32 of {@code A-Z a-z 0-9 _ -} (16-64 are allowed), new per request. */
    public static String newNonce() {
        StringBuilder out = new StringBuilder(32);
        for (int i = 0; i < 32; i++) {
            out.append(NONCE_CHARS.charAt(RANDOM.nextInt(NONCE_CHARS.length())));
        }
        return out.toString();
    }

    /** The four headers of a request of {@code appId} carrying {@code body} (empty for GET). */
    public static Map<String, String> headers(String appId, String secret, byte[] body) {
        String ts = Long.toString(System.currentTimeMillis() / 1000); // seconds, not ms
        String nonce = newNonce();
        Map<String, String> out = new LinkedHashMap<>();
        out.put("X-Imserver-App", appId);
        out.put("X-Imserver-Timestamp", ts);
        out.put("X-Imserver-Nonce", nonce);
        out.put("X-Imserver-Signature", signature(secret, ts, nonce, body));
        return out;
    }

    /** Compares two signatures in constant time (a plain equals leaks where they differ). */
    public static boolean sameSignature(String expected, String given) {
        return MessageDigest.isEqual(expected.getBytes(UTF_8), given.getBytes(UTF_8));
    }
}
