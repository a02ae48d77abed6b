#!/bin/sh
# A container has no init system: package scripts must not start services
# (postgresql-15, prometheus ...) while an image is built. 101 = "action forbidden".
exit 101
