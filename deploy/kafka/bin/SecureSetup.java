import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

/**
 * The administrator's part of the local secured broker (kafka-up.sh runs it over the PLAINTEXT
 * listener, where the anonymous principal is a super user): create rtrec's topics beforehand, as
 * on a managed cluster, and grant rtrec's principal exactly what rtrec does with them.
 *
 * <pre>java -cp 'deploy/kafka/lib/*' SecureSetup.java BOOTSTRAP USER TOPIC_PREFIX PARTITIONS</pre>
 *
 * User:USER may read and write (and describe) its topics (TOPIC_PREFIX + rtrec's default names),
 * read with consumer groups and write with transactional ids whose names start with "rtrec"
 * (the default consumer group and job name), and nothing else: no other topic, no topic creation,
 * no cluster operation. It may only read (and describe) TOPIC_PREFIX + "readonly". Run again, it
 * adds nothing twice.
 */
public class SecureSetup {
    static final String[] TOPICS = {"events", "features", "recommendations", "predictions", "dead-letter", "model-updates"};

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], principal = "User:" + args[1], prefix = args[2];
        int partitions = Integer.parseInt(args[3]);
        try (Admin admin = Admin.create(Map.<String, Object>of("bootstrap.servers", bootstrap))) {
            List<NewTopic> topics = new ArrayList<>();
            List<AclBinding> acls = new ArrayList<>();
            for (String name : TOPICS) {
                String topic = prefix + name;
                // (model versions travel in chunks under the broker's default 1 MB record limit)
                topics.add(name.equals("model-updates")
                        ? new NewTopic(topic, 1, (short) 1).configs(Map.of("cleanup.policy", "compact"))
                        : new NewTopic(topic, partitions, (short) 1));
                for (AclOperation op : List.of(AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)) {
                    acls.add(allow(ResourceType.TOPIC, topic, PatternType.LITERAL, principal, op));
                }
            }
            // A topic the user may read but not write (tests: a job told to write there fails before it starts).
            String readonly = prefix + "readonly";
            topics.add(new NewTopic(readonly, partitions, (short) 1));
            for (AclOperation op : List.of(AclOperation.READ, AclOperation.DESCRIBE)) {
                acls.add(allow(ResourceType.TOPIC, readonly, PatternType.LITERAL, principal, op));
            }
            acls.add(allow(ResourceType.GROUP, "rtrec", PatternType.PREFIXED, principal, AclOperation.READ));
            acls.add(allow(ResourceType.GROUP, "rtrec", PatternType.PREFIXED, principal, AclOperation.DESCRIBE));
            acls.add(allow(ResourceType.TRANSACTIONAL_ID, "rtrec", PatternType.PREFIXED, principal, AclOperation.WRITE));
            acls.add(allow(ResourceType.TRANSACTIONAL_ID, "rtrec", PatternType.PREFIXED, principal, AclOperation.DESCRIBE));
            for (var result : admin.createTopics(topics).values().values()) {
                try {
                    result.get();
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
            admin.createAcls(acls).all().get();
            System.out.println("kafka: topics " + prefix + "{" + String.join(",", TOPICS) + "} and ACLs for " + principal);
        }
    }

    static AclBinding allow(ResourceType type, String name, PatternType pattern, String principal, AclOperation op) {
        return new AclBinding(new ResourcePattern(type, name, pattern),
                new AccessControlEntry(principal, "*", op, AclPermissionType.ALLOW));
    }
}
