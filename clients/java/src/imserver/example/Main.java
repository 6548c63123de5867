package imserver.example;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

/**
 * A business system (an OA approval flow) integrating with imserver from the docs alone.
 *
 * <pre>
 * java -cp build/java imserver.example.Main --mode http|stream --server http://127.0.0.1:8701 \
 *     --app oa --secret ... --to li,wang --actors li [--track leave-1] [--callback-port 9000]
 * </pre>
 *
 * It pushes an approval card (approve / reject), receives the decision — as HTTP callbacks on
 * {@code --callback-port} ({@code --mode http}) or over an outbound stream ({@code --mode
 * stream}) — verifies it, drops repeats, answers with a {@code card_update}, then reads the card
 * back to see the update applied. Progress goes to stdout as lines (see README.md).
 */
public final class Main {
    private Main() {}

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = options(argv);
        String mode = need(a, "mode");
        String appId = need(a, "app");
        String secret = need(a, "secret");
        List<String> secrets = new ArrayList<>(List.of(secret));
        if (a.containsKey("verify-also")) { // a rotation's other secret: accept both meanwhile
            secrets.add(a.get("verify-also"));
        }
        long windowS = Long.parseLong(a.getOrDefault("window-s", "300"));
        int expected = Integer.parseInt(a.getOrDefault("decisions", "1"));
        long timeoutMs = 1000L * Long.parseLong(a.getOrDefault("timeout-s", "60"));
        long stallMs = Long.parseLong(a.getOrDefault("stall-first-ms", "0"));
        String track = a.getOrDefault("track", "leave-" + System.currentTimeMillis());

        AppClient app = new AppClient(need(a, "server"), appId, secret);
        CallbackVerifier verifier = new CallbackVerifier(appId, secrets, windowS);
        Decisions decisions = new Decisions();
        Runnable stop;
        if (mode.equals("http")) {
            HttpCallbackServer server = new HttpCallbackServer(a.getOrDefault("callback-host", "127.0.0.1"),
                    Integer.parseInt(a.getOrDefault("callback-port", "0")), verifier, decisions, stallMs);
            server.start();
            Out.line("READY", "http", server.url());
            stop = server::stop;
        } else if (mode.equals("stream")) {
            StreamConnection stream = new StreamConnection(app, appId, secret, verifier, decisions, stallMs);
            stream.start();
            try {
                stream.ready().get(timeoutMs, TimeUnit.MILLISECONDS);
            } catch (ExecutionException e) { // a 401/400 handshake: no retry will fix it
                Out.line("FAILED", "stream_handshake_refused");
                System.exit(3);
            }
            Out.line("READY", "stream");
            stop = stream::stop;
        } else {
            throw new IllegalArgumentException("--mode is http or stream");
        }

        Map<String, Object> pushed = app.pushCard(
                approvalCard(track, csv(need(a, "actors"))), Json.obj("users", csv(need(a, "to"))));
        Out.line("PUSHED", pushed.get("card_id"), pushed.get("out_track_id"), pushed.get("version"),
                pushed.get("duplicate"));

        if (!decisions.awaitDecisions(expected, timeoutMs)) {
            Out.line("TIMEOUT", "waiting for", expected, "decisions");
            stop.run();
            System.exit(2);
        }
        Thread.sleep(Long.parseLong(a.getOrDefault("linger-ms", "1000"))); // repeats, if any
        for (Map.Entry<String, Decisions.Handled> e : decisions.handled().entrySet()) {
            if (!e.getValue().outTrackId().isEmpty()) {
                confirm(app, e.getKey(), e.getValue());
            }
        }
        Out.line("DONE");
        stop.run();
        System.exit(0);
    }

    /**
     * Reads the card back: our {@code card_update} answer made one new version after the
     * callback's (docs/cards.md section 6). An invalid answer is dropped without telling us,
     * so the version staying at the callback's is how we learn that.
     */
    @SuppressWarnings("unchecked")
    private static void confirm(AppClient app, String actionId, Decisions.Handled h) throws Exception {
        Map<String, Object> card = Map.of();
        for (int i = 0; i < 50; i++) {
            card = app.getCard(h.outTrackId());
            if ((Long) card.get("version") > h.version()) {
                Map<String, Object> status = (Map<String, Object>) card.get("status");
                Out.line("CONFIRMED", actionId, card.get("version"), card.get("state"),
                        status == null ? null : status.get("color"));
                return;
            }
            Thread.sleep(100);
        }
        Out.line("NOT_APPLIED", actionId, card.get("version"), card.get("callback"));
    }

    /** The approval card of docs/cards.md section 3: approve / reject, a comment for rejects. */
    static Map<String, Object> approvalCard(String track, List<String> actors) {
        return Json.obj(
                "out_track_id", track,
                "title", "请假审批：张三 3 天",
                "fields", List.of(
                        Json.obj("label", "申请人", "value", "张三"),
                        Json.obj("label", "手机", "value", "13812341234", "sensitive", true)),
                "body_md", "**起止**：11月27日—11月29日",
                "status", Json.obj("text", "待审批", "color", "orange"),
                "actions", List.of(
                        Json.obj("id", "approve", "label", "同意", "decision", "approve", "style", "primary"),
                        Json.obj("id", "reject", "label", "驳回", "decision", "reject", "style", "danger")),
                "inputs", List.of(Json.obj("id", "comment", "type", "text", "label", "意见",
                        "max_len", 500L, "required_for", List.of("reject"))),
                "policy", Json.obj("type", "any", "actors", actors));
    }

    private static List<String> csv(String s) {
        return Arrays.stream(s.split(",")).map(String::trim).filter(x -> !x.isEmpty()).toList();
    }

    private static Map<String, String> options(String[] argv) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            if (!argv[i].startsWith("--")) {
                throw new IllegalArgumentException("expected --name value, got " + argv[i]);
            }
            out.put(argv[i].substring(2), argv[i + 1]);
        }
        return out;
    }

    private static String need(Map<String, String> a, String key) {
        String v = a.get(key);
        if (v == null) {
            throw new IllegalArgumentException("--" + key + " is required");
        }
        return v;
    }
}
