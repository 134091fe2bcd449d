// A minimal Java 11+ client of `intercept-sdk agent` (java.net.http, keep-alive by default).
// Run without compiling: java AgentCheck.java http://127.0.0.1:8471/ <id_number> <measure>
// Prints the status code and body of /v1/check and /v1/block, one per line.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class AgentCheck {
    public static void main(String[] args) throws Exception {
        String base = args[0];
        String body = "{\"measure\":\"" + args[2] + "\",\"subject\":{\"id_number\":\"" + args[1] + "\"}}";
        HttpClient http = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(5))
            .build();
        for (String path : new String[] {"v1/check", "v1/block"}) {
            HttpRequest.Builder req = HttpRequest.newBuilder(URI.create(base).resolve(path))
                .timeout(Duration.ofSeconds(10))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body));
            String token = System.getenv("INTERCEPT_AGENT_TOKEN");
            if (token != null) {
                req.header("Authorization", "Bearer " + token);
            }
            HttpResponse<String> res = http.send(req.build(), HttpResponse.BodyHandlers.ofString());
            System.out.println(res.statusCode() + " " + res.body());
        }
    }
}
