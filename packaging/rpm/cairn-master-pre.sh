getent group cairn >/dev/null || groupadd -r cairn
getent passwd cairn >/dev/null || \
    useradd -r -g cairn -d /var/lib/cairn/master -M -s /sbin/nologin -c "Cairn master" cairn
exit 0
