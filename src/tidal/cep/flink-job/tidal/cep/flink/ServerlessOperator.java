package tidal.cep.flink;

import java.io.IOException;
import java.util.function.Consumer;
import org.apache.flink.api.common.operators.ProcessingTimeService.ProcessingTimeCallback;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * {@code serverless("op")} for Flink: sends each event to a Tidal operator and emits its results,
 * speaking the queue protocol of docs/cep-protocol.md over Redis (packed codec, blob mode).
 *
 * <p>Host side of the protocol ({@link TidalHost}): events are framed {@code 'P' + records} of
 * at most B events and RPUSHed to the in queue when B are buffered or every F ms (a
 * processing-time timer); results are taken with {@code MULTI; LRANGE out 0 B-1; LTRIM out B -1;
 * LLEN in; EXEC}. Everything runs on the
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
    private transient TidalHost host;
    private transient long[] sendNs;
    private transient int mask;
    private transient Consumer<Txn> emit;

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
        NodeManager addr = NodeManager.request(url, token, op);
        if (!addr.codec.equals("packed") || !addr.mode.equals("blob")) {
            throw new IllegalStateException("this host speaks the packed codec in blob mode, got "
                    + addr.codec + "/" + addr.mode);
        }
        host = new TidalHost(addr.store, addr.inKey, addr.outKey, addr.batch);
        int cap = Integer.highestOneBit(Math.max(window, addr.batch) * 4 - 1) << 1;
        sendNs = new long[cap];
        mask = cap - 1;
        emit = t -> {
            t.t0 = sendNs[(int) (t.seq & mask)];
            output.collect(new StreamRecord<>(t));
        };
        long now = getProcessingTimeService().getCurrentProcessingTime();
        getProcessingTimeService().registerTimer(now + flushMs, this);
    }

    @Override
    public void processElement(StreamRecord<Txn> element) throws Exception {
        Txn t = element.getValue();
        sendNs[(int) (t.seq & mask)] = t.t0;
        if (host.add(t)) {
            pollAndThrottle();
        }
    }

    private void pollAndThrottle() throws IOException {
        host.poll(emit);
        while (host.pendingFrames() * host.batch() > window) { // backpressure into Flink
            if (host.poll(emit) == 0) {
                Thread.onSpinWait();
            }
        }
    }

    @Override
    public void onProcessingTime(long time) throws Exception {
        host.flush();
        pollAndThrottle();
        getProcessingTimeService().registerTimer(time + flushMs, this);
    }

    @Override
    public void endInput() throws Exception {
        host.flush();
        while (true) {
            if (host.poll(emit) > 0) {
                continue;
            }
            if (host.drained()) {
                return;
            }
            Thread.sleep(0, 200_000);
        }
    }

    @Override
    public void close() throws Exception {
        if (host != null) {
            host.close();
        }
        super.close();
    }
}
