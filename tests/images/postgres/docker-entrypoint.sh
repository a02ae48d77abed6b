#!/usr/bin/env bash
# Entrypoint of the postgres stand-in (tests/images/postgres, docs/images.md).
# Written for Tillflow to the official image's documented interface, not from
# its code:
#
#   POSTGRES_PASSWORD / POSTGRES_PASSWORD_FILE  the superuser's password (required
#                                 unless POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER[_FILE]          the superuser (default postgres)
#   POSTGRES_DB[_FILE]            a database made at initialisation (default: the user)
#   POSTGRES_INITDB_ARGS[_FILE]   extra initdb arguments (e.g. --data-checksums)
#   POSTGRES_HOST_AUTH_METHOD     pg_hba.conf method for TCP clients (default scram-sha-256)
#   /docker-entrypoint-initdb.d/  *.sh (run if executable, else sourced), *.sql and
#                                 *.sql.gz, in name order, on the first start only
#
# The first start (PGDATA empty) runs initdb, then a temporary server on the
# Unix socket only (so a TCP health check does not see it as ready), creates
# POSTGRES_DB, runs the init scripts and stops it. Every start then replaces
# this script with the server (exec), so SIGINT/SIGTERM reach postgres itself.
set -Eeuo pipefail

log() { printf '%s [entrypoint] %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$*"; }
die() { log "error: $*" >&2; exit 1; }

# VAR from the environment or from the file named by VAR_FILE (one of them, not
# both), else the default. VAR_FILE is unset afterwards, as in the official image.
env_or_file() {
    local var="$1" default="${2:-}"
    local file_var="${var}_FILE"
    local value="${!var:-}" file="${!file_var:-}"
    if [[ -n "$value" && -n "$file" ]]; then
        die "both $var and $file_var are set; they are exclusive"
    fi
    if [[ -n "$file" ]]; then
        value="$(< "$file")"
    fi
    export "$var=${value:-$default}"
    unset "$file_var"
}

# True when the arguments only ask postgres for its help or version.
wants_help() {
    local arg
    for arg; do
        case "$arg" in
            -'?' | --help | --describe-config | -V | --version) return 0 ;;
        esac
    done
    return 1
}

# psql as the superuser over the socket, stopping at the first error.
init_psql() {
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc "$@"
}

run_init_scripts() {
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        [[ -e "$f" ]] || continue
        case "$f" in
            *.sh)
                if [[ -x "$f" ]]; then
                    log "running $f"
                    "$f"
                else
                    log "sourcing $f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql) log "running $f"; init_psql --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | init_psql --dbname "$POSTGRES_DB" ;;
            *) log "ignoring $f" ;;
        esac
    done
}

initialise() {
    env_or_file POSTGRES_PASSWORD
    env_or_file POSTGRES_USER postgres
    env_or_file POSTGRES_DB "$POSTGRES_USER"
    env_or_file POSTGRES_INITDB_ARGS
    export POSTGRES_HOST_AUTH_METHOD="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [[ -z "$POSTGRES_PASSWORD" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
        die "the database is uninitialised and no superuser password is set: set POSTGRES_PASSWORD" \
            "or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust, which lets anyone in)"
    fi

    log "initialising $PGDATA (superuser $POSTGRES_USER${POSTGRES_INITDB_ARGS:+, $POSTGRES_INITDB_ARGS})"
    # The password goes through a pipe, never a file on disk. eval: the extra
    # arguments are shell words, quotes included.
    if [[ -n "$POSTGRES_PASSWORD" ]]; then
        eval 'initdb --username="$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"$POSTGRES_INITDB_ARGS"
    else
        eval 'initdb --username="$POSTGRES_USER" '"$POSTGRES_INITDB_ARGS"
    fi
    printf '\n# Added by the entrypoint: clients over TCP, from anywhere.\nhost all all all %s\n' \
        "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

    # The temporary server: Unix socket only.
    export PGPASSWORD="$POSTGRES_PASSWORD"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start

    if [[ "$POSTGRES_DB" != postgres ]]; then
        local exists
        exists="$(init_psql --dbname postgres --tuples-only --no-align --set db="$POSTGRES_DB" \
            <<< "SELECT 1 FROM pg_database WHERE datname = :'db'")"
        if [[ -z "$exists" ]]; then
            log "creating database $POSTGRES_DB"
            init_psql --dbname postgres --set db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db"'
        fi
    fi
    run_init_scripts

    pg_ctl -D "$PGDATA" -m fast -w stop
    unset PGPASSWORD
    log "initialisation complete; starting the server"
}

# Options alone ("-c work_mem=64MB") are the server's.
if [[ "${1:-}" == -* ]]; then
    set -- postgres "$@"
fi

if [[ "${1:-}" == postgres ]] && ! wants_help "$@"; then
    if [[ "$(id -u)" == 0 ]]; then
        # As root: hand the data and socket directories to postgres, then run
        # this script again as postgres (setpriv execs: no process stays behind).
        install -d -o postgres -g postgres -m 0700 "$PGDATA"
        chown postgres:postgres "$PGDATA"
        install -d -o postgres -g postgres -m 3777 /var/run/postgresql
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    # initdb refuses a data directory others can read. Fails harmlessly when
    # the directory belongs to someone else (initdb then says why).
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA" 2> /dev/null || true
    if [[ -s "$PGDATA/PG_VERSION" ]]; then
        log "$PGDATA holds a database cluster already: no initialisation"
    else
        initialise
    fi
fi

exec "$@"
