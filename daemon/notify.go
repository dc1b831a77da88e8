package daemon

import (
	"fmt"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// States sent to systemd (sd_notify(3)). Outside systemd (no
// NOTIFY_SOCKET) nothing is sent.
const (
	notifyReady    = sdnotify.SdNotifyReady
	notifyStopping = sdnotify.SdNotifyStopping
)

// notifyReloading is RELOADING=1 with the monotonic time systemd (253+)
// wants alongside it for Type=notify-reload; older versions ignore it.
func notifyReloading() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return sdnotify.SdNotifyReloading
	}
	return fmt.Sprintf("%s\nMONOTONIC_USEC=%d", sdnotify.SdNotifyReloading, ts.Nano()/1000)
}

func notify(log *zap.Logger, state string) {
	if _, err := sdnotify.SdNotify(false, state); err != nil {
		log.Warn("sd_notify failed", zap.String("state", state), zap.Error(err))
	}
}
