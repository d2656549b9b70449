# $1 = 1 on first install: apply the preset (as %systemd_post does).
if [ "$1" -eq 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl preset cairn-agent.service >/dev/null 2>&1 || :
fi
exit 0
