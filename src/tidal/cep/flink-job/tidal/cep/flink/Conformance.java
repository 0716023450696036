package tidal.cep.flink;

import java.util.Map;

/**
 * The host role of the protocol conformance test (tidal.cep.conformance): pushes N events
 * (seq 0..N-1) through {@link TidalHost} and reads the results until all N came back, then
 * prints {@code {"received": n, "in_order": bool, "duplicates": d}}. Environment:
 * TIDAL_CEP_STORE, TIDAL_CEP_IN, TIDAL_CEP_OUT, TIDAL_CEP_BATCH, TIDAL_CEP_CONFORMANCE_N.
 */
public final class Conformance {
    private Conformance() {}

    public static void main(String[] args) throws Exception {
        Map<String, String> env = System.getenv();
        int n = Integer.parseInt(env.get("TIDAL_CEP_CONFORMANCE_N"));
        long[] state = {-1, 0, 0}; // last seq, received, out-of-order or duplicate
        try (TidalHost h = new TidalHost(env.get("TIDAL_CEP_STORE"), env.get("TIDAL_CEP_IN"),
                env.get("TIDAL_CEP_OUT"), Integer.parseInt(env.get("TIDAL_CEP_BATCH")))) {
            java.util.function.Consumer<Txn> sink = t -> {
                if (t.seq != state[0] + 1) {
                    state[2]++;
                }
                state[0] = t.seq;
                state[1]++;
            };
            for (int i = 0; i < n; i++) {
                Txn t = new Txn();
                t.seq = i;
                t.card = i % 13;
                t.amount = 10.0 + i % 7;
                t.ts = i * 0.001;
                if (h.add(t)) {
                    h.poll(sink);
                }
            }
            h.flush();
            long deadline = System.nanoTime() + 60_000_000_000L;
            while (state[1] < n && System.nanoTime() < deadline) {
                if (h.poll(sink) == 0) {
                    Thread.sleep(1);
                }
            }
            while (!h.drained() && System.nanoTime() < deadline) {
                h.poll(sink);
                Thread.sleep(1);
            }
        }
        System.out.println("{\"received\": " + state[1] + ", \"in_order\": " + (state[2] == 0)
                + ", \"errors\": " + state[2] + "}");
    }
}
