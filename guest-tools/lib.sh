# Helpers sourced by the workloads (/usr/lib/sbtui/lib.sh in the guest).

# Whole seconds since boot, from the guest's clock.
uptime_s() {
    read -r up _ < /proc/uptime
    echo "${up%.*}"
}

# Sets SBTUI_END to the uptime at which a workload given sbtui.duration
# stops, or leaves it empty when the workload runs until powered off.
SBTUI_END=
if [ -n "$SBTUI_DURATION" ]; then
    SBTUI_END=$(( $(uptime_s) + SBTUI_DURATION ))
fi

# True once the duration is over (never without a duration).
time_is_up() {
    [ -n "$SBTUI_END" ] && [ "$(uptime_s)" -ge "$SBTUI_END" ]
}
