import java.io.FileReader;
import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.flink.kafka.shaded.org.apache.kafka.clients.admin.Admin;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.flink.kafka.shaded.org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.TopicPartition;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.flink.kafka.shaded.org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Flink job's Kafka clients, without Flink: the Kafka client that flink-sql-connector-kafka
 * bundles (shaded), given the properties rtrec passes to the SQL tables as properties.*.
 *
 * <pre>java -cp CONNECTOR_JAR:SLF4J... FlinkKafkaProbe.java PROPERTIES_FILE TOPIC</pre>
 *
 * Lists topics (admin), writes one record in a transaction (as the exactly-once sinks do) and
 * reads it back read_committed (as the source does); prints "probe ok: ..." or fails.
 */
public class FlinkKafkaProbe {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileReader in = new FileReader(args[0])) {
            props.load(in);
        }
        String topic = args[1];
        try (Admin admin = Admin.create(props)) {
            if (!admin.listTopics().names().get().contains(topic)) throw new IllegalStateException("no topic " + topic);
        }
        Properties p = (Properties) props.clone();
        p.put("transactional.id", "rtrec-probe-" + System.nanoTime());
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        String value = "probe-" + System.nanoTime();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            producer.initTransactions();
            producer.beginTransaction();
            producer.send(new ProducerRecord<>(topic, 0, "probe", value)).get();
            producer.commitTransaction();
        }
        Properties c = (Properties) props.clone();
        c.put("group.id", "rtrec-probe");
        c.put("isolation.level", "read_committed");
        c.put("key.deserializer", StringDeserializer.class.getName());
        c.put("value.deserializer", StringDeserializer.class.getName());
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            TopicPartition tp = new TopicPartition(topic, 0);
            consumer.assign(List.of(tp));
            consumer.seekToBeginning(List.of(tp));
            long deadline = System.currentTimeMillis() + 20_000;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    if (r.value().equals(value)) {
                        System.out.println("probe ok: wrote and read back " + topic + "@" + r.offset());
                        return;
                    }
                }
            }
        }
        throw new IllegalStateException("the record written to " + topic + " did not come back");
    }
}
