# The SASL_SSL listener of the local broker; sourced by kafka-up.sh when KAFKA_SASL_PORT is set.
#
#   KAFKA_PORT=19392 KAFKA_SASL_PORT=19394 deploy/kafka/bin/kafka-up.sh
#
# Next to PLAINTEXT (loopback, the administrator's: anonymous is a super user there), a
# SASL_SSL listener on 127.0.0.1:$KAFKA_SASL_PORT with SCRAM-SHA-512 and KRaft's
# StandardAuthorizer. At the first start it generates, under $KAFKA_DATA (ignored by git):
#   tls/ca.pem                  the CA that signed the broker's certificate (clients trust it)
#   tls/broker.pem              the broker's key and certificate chain (PEM keystore)
#   secrets/$KAFKA_SASL_USER.password   the user's SCRAM password (no line break; mode 600)
# and creates the SCRAM user at format time. After start-up, SecureSetup.java creates rtrec's
# topics ($KAFKA_SASL_TOPIC_PREFIX + the default names) and the user's ACLs.
KAFKA_SASL_USER="${KAFKA_SASL_USER:-rtrec}"
KAFKA_SASL_TOPIC_PREFIX="${KAFKA_SASL_TOPIC_PREFIX:-}"
KAFKA_TLS="$KAFKA_DATA/tls"
KAFKA_SECRETS="$KAFKA_DATA/secrets"

# CA and broker certificate (EC P-256, 30 days), and the user's password; once per data folder.
secure_init() {
  command -v openssl >/dev/null || { echo "kafka: the SASL_SSL listener needs openssl" >&2; exit 1; }
  mkdir -p "$KAFKA_TLS" "$KAFKA_SECRETS"
  chmod 700 "$KAFKA_TLS" "$KAFKA_SECRETS"
  if [ ! -f "$KAFKA_TLS/broker.pem" ]; then
    (
      cd "$KAFKA_TLS"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -keyout ca.key -out ca.pem \
        -subj "/CN=rtrec local Kafka CA" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout broker.key -out broker.csr \
        -subj "/CN=localhost" 2>/dev/null
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' > broker.ext
      openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile broker.ext \
        -out broker.crt 2>/dev/null
      cat broker.key broker.crt ca.pem > broker.pem
      rm -f broker.csr broker.ext ca.srl
      chmod 600 ./*.key broker.pem
    )
  fi
  if [ ! -f "$KAFKA_SECRETS/$KAFKA_SASL_USER.password" ]; then
    if [ -f "$KAFKA_DATA/logs/meta.properties" ]; then
      echo "kafka: $KAFKA_DATA was formatted without SASL users; delete it first (kafka-down.sh --clean)" >&2
      exit 1
    fi
    (umask 077; printf '%s' "$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$KAFKA_SECRETS/$KAFKA_SASL_USER.password")
  fi
}

# Appended to the rendered server.properties (a repeated key's last value wins).
secure_properties() {
  cat <<PROPS

# -- SASL_SSL listener (deploy/kafka/bin/secure.sh) --
listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},SASL_SSL://127.0.0.1:${KAFKA_SASL_PORT},CONTROLLER://127.0.0.1:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://127.0.0.1:${KAFKA_PORT},SASL_SSL://127.0.0.1:${KAFKA_SASL_PORT}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=${KAFKA_TLS}/broker.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# Loopback PLAINTEXT and CONTROLLER connections are the administrator's (and the broker's own).
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
PROPS
}

# StorageTool format arguments that create the SCRAM user.
secure_format_args() {
  printf '%s\n' --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$(cat "$KAFKA_SECRETS/$KAFKA_SASL_USER.password")]"
}

# Topics and ACLs, over PLAINTEXT as the administrator.
secure_setup() {
  java -cp "$KAFKA_CLASSPATH" "$KAFKA_HOME/bin/SecureSetup.java" "127.0.0.1:$KAFKA_PORT" "$KAFKA_SASL_USER" \
       "$KAFKA_SASL_TOPIC_PREFIX" "${KAFKA_SASL_PARTITIONS:-4}" 2>>"$KAFKA_DATA/setup.log" \
    || { echo "kafka: topic and ACL set-up failed; see $KAFKA_DATA/setup.log" >&2; exit 1; }
  echo "kafka: SASL_SSL on 127.0.0.1:$KAFKA_SASL_PORT (SCRAM-SHA-512 user $KAFKA_SASL_USER, password in" \
       "$KAFKA_SECRETS/$KAFKA_SASL_USER.password, CA $KAFKA_TLS/ca.pem)"
}
