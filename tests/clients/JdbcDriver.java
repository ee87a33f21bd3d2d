// pgjdbc with one JDBC URL; prints {"pid", "ok", "error"} as one JSON line.
// usage: java -cp /usr/share/java/postgresql.jar JdbcDriver.java JDBC_URL
import java.sql.Connection;
import java.sql.DriverManager;

public class JdbcDriver {
    public static void main(String[] args) {
        long pid = ProcessHandle.current().pid();
        try (Connection c = DriverManager.getConnection(args[0], "postgres", "")) {
            c.createStatement().execute("select 1");
            System.out.println("{\"pid\": " + pid + ", \"ok\": true}");
        } catch (Exception e) {
            String msg = String.valueOf(e.getMessage()).replace("\\", "/").replace("\"", "'");
            System.out.println("{\"pid\": " + pid + ", \"ok\": false, \"error\": \"" + msg + "\"}");
        }
    }
}
