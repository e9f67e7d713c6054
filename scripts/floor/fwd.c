// A minimal userspace tunnel, to measure the latency floor of any userspace tunnel on a
// machine (used by scripts/floor/run; not part of overlayd). One thread: poll on a TUN and a
// UDP socket; a datagram is written to the TUN and whatever the kernel answered inside
// that write is read back and sent at once. No encryption, no handshake: a measuring tool
// only, for namespaces the script makes. Whatever a real tunnel does per packet (AEAD,
// its state, its own plumbing) comes on top of what this one measures.
//
// usage: fwd TUN LOCAL_PORT PEER_IPV4 PEER_PORT [batch]
//   batch: run as SCHED_BATCH (hand-offs, as overlayd's workers while the CPU is free)
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: fwd TUN LOCAL_PORT PEER_IPV4 PEER_PORT [batch]\n");
        return 2;
    }
    int batch = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "batch")) batch = 1;
        else { fprintf(stderr, "fwd: unknown option %s\n", argv[i]); return 2; }
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    int tun = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) < 0) { perror("fwd: TUN"); return 1; }
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (sock < 0 || bind(sock, (void *)&me, sizeof me) < 0) { perror("fwd: UDP bind"); return 1; }
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
    if (inet_pton(AF_INET, argv[3], &peer.sin_addr) != 1) { fprintf(stderr, "fwd: bad peer %s\n", argv[3]); return 2; }
    if (batch) {
        struct sched_param p = {0};
        if (sched_setscheduler(0, SCHED_BATCH, &p) < 0) { perror("fwd: SCHED_BATCH"); return 1; }
    }
    struct pollfd fds[2] = {{tun, POLLIN, 0}, {sock, POLLIN, 0}};
    unsigned char buf[2048];
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        ssize_t n;
        while ((n = recv(sock, buf, sizeof buf, 0)) > 0)
            (void)!write(tun, buf, n);
        // The kernel answers inside the write (an echo reply): read it now, while awake.
        while ((n = read(tun, buf, sizeof buf)) > 0)
            sendto(sock, buf, n, 0, (void *)&peer, sizeof peer);
    }
}
