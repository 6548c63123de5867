package imserver.example;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;

/**
 * Machine-readable progress, one line per fact ({@code DECISION <action_id> <decision> ...}),
 * written whole and flushed so a test or a supervisor can follow it as it happens.
 */
public final class Out {
    private static final PrintStream OUT =
            new PrintStream(new FileOutputStream(FileDescriptor.out), true, UTF_8);

    private Out() {}

    /** Writes the words as one line (safe from any thread). */
    public static synchronized void line(Object... words) {
        StringBuilder s = new StringBuilder();
        for (Object w : words) {
            if (s.length() > 0) {
                s.append(' ');
            }
            s.append(w);
        }
        OUT.println(s);
    }
}
