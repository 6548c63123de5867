package imserver.example;

import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.Semaphore;

/**
 * What this business system does with a verified delivery, whichever transport brought it.
 *
 * <p>Delivery is at least once (docs/cards.md section 6): the same {@code action_id} comes
 * again after a timeout, a lost answer or a dropped stream. The first one is recorded (here
 * in memory; in a real OA system in the same database transaction as the business change)
 * and each repeat gets the same answer again, so a slow first answer is applied when the
 * repeat's answer arrives. App events are deduplicated the same way by {@code event_id}.
 */
public final class Decisions {
    /** What a decision did on our side: the answer we gave and the card version it was for. */
    public record Handled(Map<String, Object> answer, long version, String outTrackId) {}

    private final ConcurrentMap<String, Handled> handled = new ConcurrentHashMap<>();
    private final Semaphore decided = new Semaphore(0);

    /**
     * The answer to send for a verified delivery body: {@code {"card_update": {...}}} for a
     * card action, {@code {}} for an app event.
     */
    public Map<String, Object> onDelivery(Map<String, Object> body, String transport) {
        String type = String.valueOf(body.get("type"));
        if ("event".equals(type)) {
            String eventId = String.valueOf(body.get("event_id"));
            Handled first = handled.putIfAbsent(eventId, new Handled(Map.of(), 0, ""));
            Out.line(first == null ? "EVENT" : "REPEAT", eventId, body.get("event"), transport);
            return Map.of(); // any 2xx (or ack) acknowledges; an event takes no card_update
        }
        if (!"card.action".equals(type)) {
            Out.line("IGNORED", type, transport); // a kind of delivery newer than this code
            return Map.of();
        }
        String actionId = String.valueOf(body.get("action_id"));
        long version = (Long) body.get("version"); // the version this action created
        Handled mine = new Handled(answerFor(body), version, String.valueOf(body.get("out_track_id")));
        Handled first = handled.putIfAbsent(actionId, mine);
        if (first != null) {
            Out.line("REPEAT", actionId, transport);
            return first.answer(); // the same card_update again
        }
        Out.line("DECISION", actionId, body.get("decision"), body.get("actor"), version,
                body.get("state"), transport);
        decided.release();
        return mine.answer();
    }

    /** The card after the decision: a new status and a line in the body, for every holder. */
    private static Map<String, Object> answerFor(Map<String, Object> body) {
        boolean approved = "approve".equals(body.get("decision"));
        Map<String, Object> update = Json.obj(
                "status", Json.obj(
                        "text", approved ? "已办结（Java）" : "已驳回（Java）",
                        "color", approved ? "green" : "red"),
                "body_md", "**" + body.get("actor") + "** 的决定已由业务系统登记（第 "
                        + body.get("version") + " 版）");
        return Json.obj("card_update", update);
    }

    /** Blocks until {@code n} new decisions arrived or {@code timeoutMs} passed. */
    public boolean awaitDecisions(int n, long timeoutMs) throws InterruptedException {
        return decided.tryAcquire(n, timeoutMs, java.util.concurrent.TimeUnit.MILLISECONDS);
    }

    /** The decisions handled so far, by action id. */
    public Map<String, Handled> handled() {
        return Map.copyOf(handled);
    }
}
