package tidal.cep.flink;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.BitSet;
import java.util.HashSet;
import java.util.Locale;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * The sink of the benchmark (parallelism 1): latency of every result (now - its event's t0),
 * results per sequence number (lost, duplicated) and the matched large transactions (flag 2)
 * against the expected ones. At end of input it writes one JSON object to {@code outFile}.
 */
public class Stats extends AbstractStreamOperator<String>
        implements OneInputStreamOperator<Txn, String>, BoundedOneInput {
    private final String label;
    private final int n;
    private final boolean allEvents;
    private final String expectedFile;
    private final String outFile;
    private transient long[] lat;
    private transient int nLat;
    private transient BitSet seen;
    private transient long dup;
    private transient BitSet matched;
    private transient long matchDup;
    private transient HashSet<Long> pairs;

    public Stats(String label, int n, boolean allEvents, String expectedFile, String outFile) {
        this.label = label;
        this.n = n;
        this.allEvents = allEvents;
        this.expectedFile = expectedFile;
        this.outFile = outFile;
    }

    @Override
    public void open() throws Exception {
        super.open();
        lat = new long[1 << 16];
        seen = new BitSet(n);
        matched = new BitSet(n);
        pairs = new HashSet<>();
    }

    @Override
    public void processElement(StreamRecord<Txn> element) {
        Txn t = element.getValue();
        long now = System.nanoTime();
        if (nLat == lat.length) {
            lat = Arrays.copyOf(lat, lat.length * 2);
        }
        lat[nLat++] = now - t.t0;
        int s = (int) t.seq;
        if (seen.get(s)) {
            dup++;
        }
        seen.set(s);
        if (t.flag == 2) {
            // FlinkCEP emits one match per (small, large) pair (merchant = the small's seq);
            // a Tidal operator one flagged event per large
            long key = allEvents ? s : ((long) s << 32) | (t.merchant & 0xffffffffL);
            if (allEvents ? matched.get(s) : !pairs.add(key)) {
                matchDup++;
            }
            matched.set(s);
        }
        Main.END_NS.set(now);
    }

    private static double pct(long[] a, int len, double q) {
        if (len == 0) {
            return -1;
        }
        int i = (int) Math.min(len - 1, Math.max(0, Math.ceil(q * len) - 1));
        return a[i] / 1e6;
    }

    @Override
    public void endInput() throws IOException {
        long end = Main.END_NS.get();
        double secs = (end - Main.START_NS.get()) / 1e9;
        BitSet expected = new BitSet(n);
        for (String line : Files.readAllLines(Path.of(expectedFile))) {
            if (!line.isBlank()) {
                expected.set(Integer.parseInt(line.trim()));
            }
        }
        BitSet missing = (BitSet) expected.clone();
        missing.andNot(matched);
        BitSet extra = (BitSet) matched.clone();
        extra.andNot(expected);
        long lost;
        long dupl;
        if (allEvents) { // every event comes back: loss and duplication by sequence number
            lost = n - seen.cardinality();
            dupl = dup;
        } else { // only matches come back (FlinkCEP): loss and duplication of matches
            lost = missing.cardinality();
            dupl = matchDup;
        }
        long[] a = Arrays.copyOf(lat, nLat);
        Arrays.sort(a);
        String json = String.format(Locale.ROOT,
                "{\"backend\":\"%s\",\"events\":%d,\"seconds\":%.6f,\"events_per_s\":%.1f,"
                        + "\"results\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
                        + "\"lost_events\":%d,\"duplicated_events\":%d,\"matches\":%d,"
                        + "\"matches_expected\":%d,\"matches_missing\":%d,\"matches_extra\":%d,"
                        + "\"loss_counted_on\":\"%s\"}",
                label, n, secs, n / secs, nLat, pct(a, nLat, 0.5), pct(a, nLat, 0.99),
                pct(a, nLat, 1.0), lost, dupl, matched.cardinality(), expected.cardinality(),
                missing.cardinality(), extra.cardinality(), allEvents ? "events" : "matches");
        Files.writeString(Path.of(outFile), json + "\n");
        output.collect(new StreamRecord<>(json));
    }
}
