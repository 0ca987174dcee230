# `modeldeck compose smoke` only: Debian's rabbitmq-server stands in for the rabbitmq:3.13-management image.
ARG DEBIAN_IMAGE=modeldeck-smoke/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 RABBITMQ_LOGS=-
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && rabbitmq-plugins --offline enable rabbitmq_management \
 && printf 'loopback_users = none\nlisteners.tcp.default = 5672\n' > /etc/rabbitmq/rabbitmq.conf
# The service's RABBITMQ_DEFAULT_USER/PASS create the first user, as with the official image.
USER rabbitmq
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
