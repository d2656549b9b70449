# $1 = 0 on erase (not upgrade): disable and stop (as %systemd_preun does).
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now cairn-agent.service >/dev/null 2>&1 || :
fi
exit 0
