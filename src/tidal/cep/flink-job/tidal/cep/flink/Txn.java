package tidal.cep.flink;

import java.nio.ByteBuffer;

/**
 * The card transaction of Tidal's workload (tidal.cep.codec.TXN_DTYPE), as a Flink POJO. The
 * packed wire record is 40 bytes, little endian: seq i64, card i64, ts f64, amount f64,
 * merchant i32, flag i32. {@code t0} (not on the wire) is the System.nanoTime() at which the
 * source emitted the event, for latencies.
 */
public class Txn {
    public static final int BYTES = 40;
    public long seq;
    public long card;
    public double ts;
    public double amount;
    public int merchant;
    public int flag;
    public long t0;

    public Txn() {}

    /** Reads one record at the buffer's position (the buffer must be little endian). */
    public static Txn read(ByteBuffer b) {
        Txn t = new Txn();
        t.seq = b.getLong();
        t.card = b.getLong();
        t.ts = b.getDouble();
        t.amount = b.getDouble();
        t.merchant = b.getInt();
        t.flag = b.getInt();
        return t;
    }

    /** Appends the packed record (little endian buffer). */
    public void write(ByteBuffer b) {
        b.putLong(seq).putLong(card).putDouble(ts).putDouble(amount).putInt(merchant).putInt(flag);
    }
}
