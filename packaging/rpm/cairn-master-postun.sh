# $1 >= 1 on upgrade: restart the running service (as %systemd_postun_with_restart does).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart cairn-master.service >/dev/null 2>&1 || :
    fi
fi
exit 0
