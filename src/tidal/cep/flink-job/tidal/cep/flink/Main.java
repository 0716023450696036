package tidal.cep.flink;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.cep.CEP;
import org.apache.flink.cep.PatternSelectFunction;
import org.apache.flink.cep.pattern.Pattern;
import org.apache.flink.cep.pattern.conditions.SimpleCondition;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

/**
 * The Flink side of {@code tidal cep bench --flink}: one detection (per card, a purchase under 5
 * followed by one over 500 within 10 minutes) on Flink's local mini-cluster, either through a
 * Tidal operator ({@code --mode tidal}: {@code serverless("op")}, the {@code small_large}
 * operator emitting every event with flag 2 on a match) or in FlinkCEP ({@code --mode flinkcep}:
 * {@code begin(small).followedByAny(large).within(10 min)}, event time). Events are the packed
 * records of {@code --events} (written by the Python bench, the same for every backend).
 *
 * <p>Usage: {@code java -cp classes:lib/* tidal.cep.flink.Main --mode tidal|flinkcep --events F
 * --n N --expected F --out F [--url U --op NAME --flush-ms 1 --window 50000 --watermark-ms 1]};
 * the token comes from
 * {@code $TIDAL_CEP_TOKEN}.
 */
public final class Main {
    static final AtomicLong START_NS = new AtomicLong();
    static final AtomicLong END_NS = new AtomicLong();

    private Main() {}

    /** Loads record i of the events file; stamps t0 (and the run's start on the first one). */
    public static final class Load extends RichMapFunction<Long, Txn> {
        private final String file;
        private transient MappedByteBuffer map;

        public Load(String file) {
            this.file = file;
        }

        @Override
        public void open(OpenContext ctx) throws IOException {
            try (RandomAccessFile f = new RandomAccessFile(file, "r")) {
                map = f.getChannel().map(FileChannel.MapMode.READ_ONLY, 0, f.length());
                map.order(ByteOrder.LITTLE_ENDIAN);
            }
        }

        @Override
        public Txn map(Long i) {
            long now = System.nanoTime();
            START_NS.compareAndSet(0, now);
            map.position((int) (i * Txn.BYTES));
            Txn t = Txn.read(map);
            t.t0 = now;
            return t;
        }
    }

    public static final class ByCard implements KeySelector<Txn, Long> {
        @Override
        public Long getKey(Txn t) {
            return t.card;
        }
    }

    public static final class Large implements PatternSelectFunction<Txn, Txn> {
        @Override
        public Txn select(Map<String, List<Txn>> match) {
            Txn t = match.get("large").get(0);
            Txn out = new Txn();
            out.seq = t.seq;
            out.card = t.card;
            out.ts = t.ts;
            out.amount = t.amount;
            out.merchant = (int) match.get("small").get(0).seq; // the pair, for duplicates
            out.flag = 2;
            out.t0 = t.t0;
            return out;
        }
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        }
        String mode = a.getOrDefault("mode", "tidal");
        int n = Integer.parseInt(a.get("n"));
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.setParallelism(1);
        // FlinkCEP in event time emits matches when the watermark passes: 1 ms by default
        env.getConfig().setAutoWatermarkInterval(Long.parseLong(a.getOrDefault("watermark-ms", "1")));
        DataStream<Txn> src = env.fromSequence(0, n - 1).map(new Load(a.get("events")))
                .returns(TypeInformation.of(Txn.class));
        DataStream<Txn> out;
        String label;
        if (mode.equals("flinkcep")) {
            Pattern<Txn, Txn> p = Pattern.<Txn>begin("small")
                    .where(SimpleCondition.of(t -> t.amount < 5.0))
                    .followedByAny("large")
                    .where(SimpleCondition.of(t -> t.amount > 500.0))
                    .within(Duration.ofSeconds(600));
            DataStream<Txn> timed = src.assignTimestampsAndWatermarks(
                    WatermarkStrategy.<Txn>forMonotonousTimestamps()
                            .withTimestampAssigner((t, ts) -> (long) (t.ts * 1000.0)));
            out = CEP.pattern(timed.keyBy(new ByCard()), p).select(new Large());
            label = "flinkcep";
        } else {
            String token = System.getenv("TIDAL_CEP_TOKEN");
            String op = a.getOrDefault("op", "small_large");
            out = src.transform("serverless(" + op + ")", TypeInformation.of(Txn.class),
                    new ServerlessOperator(a.get("url"), token, op,
                            Long.parseLong(a.getOrDefault("flush-ms", "1")),
                            Integer.parseInt(a.getOrDefault("window", "50000"))));
            label = "flink-tidal-operator";
        }
        out.transform("stats", Types.STRING,
                        new Stats(label, n, !mode.equals("flinkcep"), a.get("expected"), a.get("out")))
                .sinkTo(new DiscardingSink<>());
        env.execute("tidal-cep-" + mode);
    }
}
