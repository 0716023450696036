package tidal.cep.flink;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** requestOperator over the node manager's HTTP API: the queue addresses of an operator. */
public final class NodeManager {
    public final String store;
    public final String inKey;
    public final String outKey;
    public final int batch;
    public final String codec;
    public final String mode;

    private NodeManager(String body) {
        store = str(body, "store");
        inKey = str(body, "in");
        outKey = str(body, "out");
        batch = Integer.parseInt(num(body, "batch"));
        codec = str(body, "codec");
        mode = str(body, "mode");
    }

    private static String str(String body, String key) {
        Matcher m = Pattern.compile("\"" + key + "\"\\s*:\\s*\"([^\"]*)\"").matcher(body);
        if (!m.find()) {
            throw new IllegalStateException("node manager reply lacks '" + key + "': " + body);
        }
        return m.group(1);
    }

    private static String num(String body, String key) {
        Matcher m = Pattern.compile("\"" + key + "\"\\s*:\\s*(\\d+)").matcher(body);
        if (!m.find()) {
            throw new IllegalStateException("node manager reply lacks '" + key + "': " + body);
        }
        return m.group(1);
    }

    /** POST {url}/v1/operators/{op}/request with the bearer token; starts the operator. */
    public static NodeManager request(String url, String token, String op)
            throws IOException, InterruptedException {
        HttpClient http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10)).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(url + "/v1/operators/" + op + "/request"))
                .header("Authorization", "Bearer " + token)
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString("{}"))
                .timeout(Duration.ofSeconds(60))
                .build();
        HttpResponse<String> r = http.send(req, HttpResponse.BodyHandlers.ofString());
        if (r.statusCode() != 200) {
            throw new IOException("requestOperator " + op + ": HTTP " + r.statusCode() + " " + r.body());
        }
        return new NodeManager(r.body());
    }
}
