/* Stand-ins for the two libsystemd functions that Debian's static libdbus-1.a references
 * (socket activation). Debian ships no libsystemd.a; sidecap never uses D-Bus at all (libpcap
 * only uses it for its dbus-* capture devices), so "no sockets passed" is the right answer. */
#include <errno.h>
int sd_listen_fds(int unset_environment) { (void)unset_environment; return 0; }
int sd_is_socket(int fd, int family, int type, int listening) {
    (void)fd; (void)family; (void)type; (void)listening; return -ENOSYS; }
