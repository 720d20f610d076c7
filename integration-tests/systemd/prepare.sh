#!/bin/bash
# Used by tests/systemd_units.rs, run by boot.sh chrooted into the
# container's overlay before it boots: docs/deploy.md for one database host
# db1 (127.0.0.1) with its coordinator c1 (127.0.0.1:7200) on the same host.
# /root/stage holds the shipped units and polkit rule, unmodified, and the
# configs the test rendered from deploy/config.
set -euo pipefail
cd /root/stage

# A fresh host: nothing of dbfleet's from the image (the package test may
# install and purge dbfleet on the host meanwhile).
rm -rf /etc/dbfleet /var/lib/dbfleet /var/backups/dbfleet /root/ca /root/.config/dbfleet.toml
mkdir -p /etc/dbfleet

# §1: every member starts read-only, from its service, not a socket unit.
install -m 0644 60-dbfleet.cnf /etc/mysql/mariadb.conf.d/
ln -sfn /dev/null /etc/systemd/system/mariadb.socket
rm -f /etc/systemd/system/sockets.target.wants/mariadb.socket

# §5-§6: the users and directories the packages make. The user databases
# are copied up first, so the package test adding or removing the dbfleet
# user on the host meanwhile changes nothing here.
touch /etc/passwd /etc/group /etc/shadow /etc/gshadow
id mysql >/dev/null
getent group dbfleet >/dev/null || groupadd --system dbfleet
id dbfleet >/dev/null 2>&1 || useradd --system --gid dbfleet --home /var/lib/dbfleet --shell /usr/sbin/nologin dbfleet
install -d -o root -g mysql -m 0750 /etc/dbfleet/tls
install -d -o root -g dbfleet -m 0750 /etc/dbfleet/coordinator-tls
install -d -o mysql -g mysql -m 0700 /var/backups/dbfleet

# §7: certificates with the CLI.
dbfleet cert init --dir /root/ca >/dev/null
dbfleet cert issue --dir /root/ca --role agent --name db1 --ip 127.0.0.1 >/dev/null
dbfleet cert issue --dir /root/ca --role coordinator --name c1 --ip 127.0.0.1 >/dev/null
dbfleet cert issue --dir /root/ca --role operator --name alice >/dev/null
install -o root -g mysql -m 0644 /root/ca/ca.pem /root/ca/agent-db1.pem /etc/dbfleet/tls/
install -o mysql -g mysql -m 0600 /root/ca/agent-db1.key /etc/dbfleet/tls/
install -o root -g dbfleet -m 0644 /root/ca/ca.pem /root/ca/coordinator-c1.pem /etc/dbfleet/coordinator-tls/
install -o dbfleet -g dbfleet -m 0600 /root/ca/coordinator-c1.key /etc/dbfleet/coordinator-tls/

# §6 and §8: passwords and configs.
install -o mysql -g mysql -m 0600 mysql.password repl.password /etc/dbfleet/
install -o root -g mysql -m 0640 agent.toml /etc/dbfleet/
install -o root -g dbfleet -m 0640 coordinator.toml /etc/dbfleet/
install -d -m 0700 /root/.config
install -m 0600 dbfleet.toml /root/.config/

# §8: the shipped units and polkit rule, unmodified.
install -m 0644 dbfleet-agent.service dbfleet-coordinator.service /etc/systemd/system/
install -m 0644 50-dbfleet-agent.rules /etc/polkit-1/rules.d/
