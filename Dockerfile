# The anonymizer image used by compose.yaml (services migrate, producer and
# anonymizer): the official Deno image with this repository's code and its
# npm dependencies cached at build time, so a container needs no registry.
#
# Not built or run by CI: the development machines and CI have no Docker
# engine. tests/compose_test.ts checks compose.yaml only through
# `docker-compose config`; the image itself is unverified there.
#
#   docker build -t anonymizer:local .
#   docker run --rm anonymizer:local run --help

# Keep in step with the Deno that the tests run on.
ARG DENO_VERSION=2.9.6
FROM denoland/deno:${DENO_VERSION}

WORKDIR /app
# The official image runs as root by default but ships the unprivileged user
# deno; the code, the module cache and the KV folder belong to it.
RUN mkdir -p /var/lib/anonymizer && chown deno:deno /app /var/lib/anonymizer
USER deno

# deno.lock pins the npm versions when it is present.
COPY --chown=deno:deno deno.json deno.lock* ./
COPY --chown=deno:deno main.ts mod.ts ./
COPY --chown=deno:deno lib/ lib/
COPY --chown=deno:deno tools/ tools/
COPY --chown=deno:deno schema/ schema/
# main.ts loads each subcommand with a dynamic import: name them all so every
# npm package is cached now and --cached-only can hold at run time.
RUN deno install --entrypoint main.ts lib/cli/run_command.ts tools/produce_command.ts \
    lib/cli/migrate_command.ts lib/cli/status_command.ts lib/cli/dlq_command.ts tools/demo_command.ts

# A named volume mounted here starts with this folder's owner, so deno can write.
VOLUME ["/var/lib/anonymizer"]
ENV KV_PATH=/var/lib/anonymizer/queue.kv \
    METRICS_LISTEN=0.0.0.0:9464 \
    NO_COLOR=1
EXPOSE 9464

# The permissions and V8 heap limits of the deno.json run task (checked by
# tests/heap_limit_test.ts); the unstable kv and cron APIs come from
# deno.json's "unstable" list.
ENTRYPOINT ["deno", "run", "--cached-only", "--v8-flags=--max-old-space-size=48,--max-semi-space-size=1,--no-memory-pool,--expose-gc,--single-threaded-gc,--no-turbofan", "--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys", "--allow-ffi", "main.ts"]
CMD ["run", "--help"]
