package tidal.cep.flink;

import java.io.IOException;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * {@code serverless("op")} for Flink: sends each event to a Tidal operator and emits its results,
 * speaking the queue protocol of docs/cep-protocol.md over Redis (packed codec, blob mode).
 *
 * <p>Host side of the protocol: events are framed {@code 'P' + records} of at most B events and
 * RPUSHed to the in queue when B are buffered or every F ms (a processing-time timer); results
 * are taken with {@code MULTI; LRANGE out 0 B-1; LTRIM out B -1; LLEN in; EXEC}. Everything runs on the
 * task thread (Flink's mailbox): results are emitted from it, never from a foreign thread. At
 * most {@code window} events wait in the in queue (backpressure into Flink). At end of input the
 * operator drains: it waits until the in and out queues are empty (the operator commits results
 * and consumption in one transaction, so an empty in queue means every result was pushed).
 */
public class ServerlessOperator extends AbstractStreamOperator<Txn>
        implements OneInputStreamOperator<Txn, Txn>, BoundedOneInput, ProcessingTimeCallback {
    private final String url;
    private final String token;
    private final String op;
    private final long flushMs;
    private final int window;
    private transient Resp redis;
    private transient NodeManager addr;
    private transient ByteBuffer buf;
    private transient int buffered;
    private transient long[] sendNs;
    private transient int mask;
    private transient byte[][] pollLrange;
    private transient byte[][] pollLtrim;
    private transient byte[][] pollLlen;
    private transient long pendingFrames;

    public ServerlessOperator(String url, String token, String op, long flushMs, int window) {
        this.url = url;
        this.token = token;
        this.op = op;
        this.flushMs = flushMs;
        this.window = window;
    }

    @Override
    public void open() throws Exception {
        super.open();
        addr = NodeManager.request(url, token, op);
        if (!addr.codec.equals("packed") || !addr.mode.equals("blob")) {
            throw new IllegalStateException("this host speaks the packed codec in blob mode, got "
                    + addr.codec + "/" + addr.mode);
        }
        URI u = URI.create(addr.store);
        String path = u.getPath() == null || u.getPath().length() <= 1 ? "0" : u.getPath().substring(1);
        redis = new Resp(u.getHost(), u.getPort(), Integer.parseInt(path));
        buf = ByteBuffer.allocate(1 + addr.batch * Txn.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        buf.put((byte) 'P');
        int cap = Integer.highestOneBit(Math.max(window, addr.batch) * 4 - 1) << 1;
        sendNs = new long[cap];
        mask = cap - 1;
        byte[] out = Resp.bytes(addr.outKey);
        pollLrange = new byte[][] {Resp.bytes("LRANGE"), out, Resp.bytes("0"),
            Resp.bytes(Integer.toString(addr.batch - 1))};
        pollLtrim = new byte[][] {Resp.bytes("LTRIM"), out, Resp.bytes(Integer.toString(addr.batch)),
            Resp.bytes("-1")};
        pollLlen = new byte[][] {Resp.bytes("LLEN"), Resp.bytes(addr.inKey)};
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + flushMs, this);
    }

    @Override
    public void processElement(StreamRecord<Txn> element) throws Exception {
        Txn t = element.getValue();
        sendNs[(int) (t.seq & mask)] = t.t0;
        t.write(buf);
        if (++buffered == addr.batch) {
            flush();
        }
    }

    private void flush() throws IOException {
        if (buffered > 0) {
            byte[] frame = new byte[buf.position()];
            buf.flip();
            buf.get(frame);
            buf.clear();
            buf.put((byte) 'P');
            redis.call(Resp.bytes("RPUSH"), Resp.bytes(addr.inKey), frame);
            buffered = 0;
        }
        poll();
        while (pendingFrames * addr.batch > window) { // backpressure: the operator is behind
            if (poll() == 0) {
                Thread.onSpinWait();
            }
        }
    }

    /** Takes up to B result frames, emits their events; returns how many. */
    private int poll() throws IOException {
        List<Object> r = redis.multi(pollLrange, pollLtrim, pollLlen);
        pendingFrames = (Long) r.get(2);
        @SuppressWarnings("unchecked")
        List<Object> frames = (List<Object>) r.get(0);
        int n = 0;
        for (Object f : frames) {
            byte[] b = (byte[]) f;
            if (b.length == 0 || b[0] != 'P') {
                throw new IOException("unexpected result frame kind " + (b.length == 0 ? -1 : b[0]));
            }
            ByteBuffer bb = ByteBuffer.wrap(b, 1, b.length - 1).order(ByteOrder.LITTLE_ENDIAN);
            while (bb.remaining() >= Txn.BYTES) {
                Txn t = Txn.read(bb);
                t.t0 = sendNs[(int) (t.seq & mask)];
                output.collect(new StreamRecord<>(t));
                n++;
            }
        }
        return n;
    }

    @Override
    public void onProcessingTime(long time) throws Exception {
        flush();
        getProcessingTimeService().registerTimer(time + flushMs, this);
    }

    @Override
    public void endInput() throws Exception {
        flush();
        byte[][] llenIn = {Resp.bytes("LLEN"), Resp.bytes(addr.inKey)};
        byte[][] llenOut = {Resp.bytes("LLEN"), Resp.bytes(addr.outKey)};
        while (true) {
            if (poll() > 0) {
                continue;
            }
            List<Object> q = redis.multi(llenIn, llenOut);
            if ((Long) q.get(0) == 0 && (Long) q.get(1) == 0) {
                return;
            }
            Thread.sleep(0, 200_000);
        }
    }

    @Override
    public void close() throws Exception {
        if (redis != null) {
            redis.close();
        }
        super.close();
    }
}
