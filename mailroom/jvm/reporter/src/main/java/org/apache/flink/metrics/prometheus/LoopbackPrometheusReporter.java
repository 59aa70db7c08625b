package org.apache.flink.metrics.prometheus;

import io.prometheus.client.exporter.HTTPServer;
import org.apache.flink.util.PortRange;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.util.Iterator;

/**
 * Flink's PrometheusReporter, bound to one address instead of every interface.
 *
 * <p>In Flink's package because AbstractPrometheusReporter's {@code registry} is package-private;
 * it must be loaded by the same class loader as the prometheus plugin jar (the same plugin folder,
 * or the same {@code env.add_jars} call).
 */
public class LoopbackPrometheusReporter extends AbstractPrometheusReporter {

    private final HTTPServer httpServer;

    LoopbackPrometheusReporter(String host, PortRange ports) {
        HTTPServer server = null;
        Iterator<Integer> it = ports.getPortsIterator();
        while (server == null && it.hasNext()) {
            int port = it.next();
            try {
                server = new HTTPServer(new InetSocketAddress(host, port), registry);
                log.info("Started LoopbackPrometheusReporter HTTP server on {}:{}.", host, port);
            } catch (IOException e) {
                log.debug("Could not start LoopbackPrometheusReporter HTTP server on {}:{}.", host, port, e);
            }
        }
        if (server == null) {
            throw new RuntimeException("Could not start LoopbackPrometheusReporter HTTP server on " + host + ", any port in " + ports);
        }
        httpServer = server;
    }

    @Override
    public void close() {
        httpServer.stop();
        super.close();
    }
}
