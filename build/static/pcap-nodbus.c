/* Stand-ins for libpcap's D-Bus capture source (pcap-dbus.o), which build.sh takes out of the
 * copy of Debian's libpcap.a it links: that object is the only user of libdbus-1, whose static
 * library (and the glibc code it pulls in) was 330 KB of the image's binary (docs/image.md).
 * libpcap asks every capture source in turn whether a device name is its own and for its devices;
 * these answer "not mine" and "none", so the dbus-system / dbus-session pseudo-devices are simply
 * absent, as on a libpcap built without D-Bus. Signatures: libpcap 1.10's pcap-dbus.h. */
#include <stddef.h>

struct pcap;
struct pcap_if_list;

struct pcap *dbus_create(const char *device, char *ebuf, int *is_ours) {
    (void)device;
    (void)ebuf;
    *is_ours = 0;
    return NULL;
}

int dbus_findalldevs(struct pcap_if_list *devlistp, char *err_str) {
    (void)devlistp;
    (void)err_str;
    return 0;
}
