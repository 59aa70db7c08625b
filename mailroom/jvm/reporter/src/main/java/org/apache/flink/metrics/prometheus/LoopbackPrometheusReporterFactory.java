package org.apache.flink.metrics.prometheus;

import org.apache.flink.metrics.reporter.MetricReporter;
import org.apache.flink.metrics.reporter.MetricReporterFactory;
import org.apache.flink.util.PortRange;

import java.util.Properties;

/** metrics.reporter.NAME.host (default 127.0.0.1) and .port (a port or range, default 9249). */
public class LoopbackPrometheusReporterFactory implements MetricReporterFactory {

    @Override
    public MetricReporter createMetricReporter(Properties properties) {
        String host = properties.getProperty("host", "127.0.0.1");
        PortRange ports = new PortRange(properties.getProperty("port", "9249"));
        return new LoopbackPrometheusReporter(host, ports);
    }
}
