package tidal.cep.flink;

import java.io.IOException;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.function.Consumer;

/**
 * The host side of the Tidal CEP queue protocol (docs/cep-protocol.md) over Redis, packed codec,
 * blob mode, with no Flink dependency: {@link #add} buffers an event and pushes a frame of B
 * ({@code RPUSH in 'P'+records}); {@link #flush} pushes a partial frame; {@link #poll} takes up
 * to B result frames atomically ({@code MULTI; LRANGE out 0 B-1; LTRIM out B -1; LLEN in; EXEC})
 * and hands every record to the consumer; {@link #drained} is true when the in and out queues
 * are empty (the operator commits results and consumption in one transaction). Not
 * thread-safe: one owner thread (Flink's task thread, or a plain program).
 */
public final class TidalHost implements AutoCloseable {
    private final Resp redis;
    private final int batch;
    private final byte[] inKey;
    private final ByteBuffer buf;
    private int buffered;
    private long pendingFrames;
    private final byte[][] pollLrange;
    private final byte[][] pollLtrim;
    private final byte[][] pollLlen;
    private final byte[][] llenOut;

    public TidalHost(String storeUrl, String inKey, String outKey, int batch) throws IOException {
        URI u = URI.create(storeUrl);
        if (!"redis".equals(u.getScheme())) {
            throw new IOException("this host speaks redis:// stores, got " + storeUrl);
        }
        String db = u.getPath() == null || u.getPath().length() <= 1 ? "0" : u.getPath().substring(1);
        this.redis = new Resp(u.getHost(), u.getPort() < 0 ? 6379 : u.getPort(), Integer.parseInt(db));
        this.batch = batch;
        this.inKey = Resp.bytes(inKey);
        this.buf = ByteBuffer.allocate(1 + batch * Txn.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        buf.put((byte) 'P');
        byte[] out = Resp.bytes(outKey);
        pollLrange = new byte[][] {Resp.bytes("LRANGE"), out, Resp.bytes("0"),
            Resp.bytes(Integer.toString(batch - 1))};
        pollLtrim = new byte[][] {Resp.bytes("LTRIM"), out, Resp.bytes(Integer.toString(batch)),
            Resp.bytes("-1")};
        pollLlen = new byte[][] {Resp.bytes("LLEN"), this.inKey};
        llenOut = new byte[][] {Resp.bytes("LLEN"), out};
    }

    /** Buffers one event; pushes a full frame of B events. Returns true when it pushed. */
    public boolean add(Txn t) throws IOException {
        t.write(buf);
        if (++buffered == batch) {
            flush();
            return true;
        }
        return false;
    }

    /** Pushes the buffered events (at most B) as one frame. */
    public void flush() throws IOException {
        if (buffered == 0) {
            return;
        }
        byte[] frame = new byte[buf.position()];
        buf.flip();
        buf.get(frame);
        buf.clear();
        buf.put((byte) 'P');
        redis.call(Resp.bytes("RPUSH"), inKey, frame);
        buffered = 0;
    }

    /** Takes up to B result frames; returns the number of result events handed over. */
    public int poll(Consumer<Txn> sink) throws IOException {
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
                sink.accept(Txn.read(bb));
                n++;
            }
        }
        return n;
    }

    /** Frames waiting in the in queue at the last poll (the operator's backlog). */
    public long pendingFrames() {
        return pendingFrames;
    }

    /** True when both queues are empty: every pushed event was consumed and its results read. */
    public boolean drained() throws IOException {
        List<Object> q = redis.multi(pollLlen, llenOut);
        return buffered == 0 && (Long) q.get(0) == 0 && (Long) q.get(1) == 0;
    }

    public int batch() {
        return batch;
    }

    @Override
    public void close() throws IOException {
        redis.close();
    }
}
