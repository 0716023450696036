package tidal.cep.flink;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * A minimal Redis (RESP2) client: enough for the Tidal CEP queue protocol (docs/cep-protocol.md):
 * RPUSH, LLEN and the MULTI/EXEC transactions of the host side. One connection, pipelined,
 * not thread-safe (each Flink subtask owns its own).
 */
public final class Resp implements AutoCloseable {
    private final Socket sock;
    private final OutputStream out;
    private final InputStream in;

    public Resp(String host, int port, int db) throws IOException {
        sock = new Socket(host, port);
        sock.setTcpNoDelay(true);
        out = new BufferedOutputStream(sock.getOutputStream(), 1 << 16);
        in = new BufferedInputStream(sock.getInputStream(), 1 << 16);
        if (db != 0) {
            call(bytes("SELECT"), bytes(Integer.toString(db)));
        }
    }

    public static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private void write(byte[]... args) throws IOException {
        out.write('*');
        out.write(bytes(Integer.toString(args.length)));
        out.write('\r');
        out.write('\n');
        for (byte[] a : args) {
            out.write('$');
            out.write(bytes(Integer.toString(a.length)));
            out.write('\r');
            out.write('\n');
            out.write(a);
            out.write('\r');
            out.write('\n');
        }
    }

    /** One command, one reply. */
    public Object call(byte[]... args) throws IOException {
        write(args);
        out.flush();
        return read();
    }

    /** MULTI; cmds...; EXEC: returns EXEC's reply array (one entry per command). */
    @SuppressWarnings("unchecked")
    public List<Object> multi(byte[][]... cmds) throws IOException {
        write(bytes("MULTI"));
        for (byte[][] c : cmds) {
            write(c);
        }
        write(bytes("EXEC"));
        out.flush();
        read(); // +OK
        for (int i = 0; i < cmds.length; i++) {
            read(); // +QUEUED
        }
        return (List<Object>) read();
    }

    private String line() throws IOException {
        StringBuilder sb = new StringBuilder();
        int c;
        while ((c = in.read()) != '\r') {
            if (c < 0) {
                throw new IOException("redis connection closed");
            }
            sb.append((char) c);
        }
        in.read(); // \n
        return sb.toString();
    }

    private Object read() throws IOException {
        int t = in.read();
        switch (t) {
            case '+':
                return line();
            case '-':
                throw new IOException("redis error: " + line());
            case ':':
                return Long.parseLong(line());
            case '$': {
                int n = Integer.parseInt(line());
                if (n < 0) {
                    return null;
                }
                byte[] b = in.readNBytes(n);
                in.read();
                in.read();
                return b;
            }
            case '*': {
                int n = Integer.parseInt(line());
                if (n < 0) {
                    return null;
                }
                List<Object> items = new ArrayList<>(n);
                for (int i = 0; i < n; i++) {
                    items.add(read());
                }
                return items;
            }
            default:
                throw new IOException("bad RESP type " + t);
        }
    }

    @Override
    public void close() throws IOException {
        sock.close();
    }
}
