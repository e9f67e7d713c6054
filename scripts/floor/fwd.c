// A minimal userspace tunnel, to measure the latency floor of any userspace tunnel on a
// machine (used by scripts/floor/run; not part of overlayd). One thread: poll on a TUN and a
// UDP socket; a datagram is written to the TUN and whatever the kernel answered inside
// that write is read back and sent at once. No encryption, no handshake: a measuring tool
// only, for namespaces the script makes. Whatever a real tunnel does per packet (AEAD,
// its state, its own plumbing) comes on top of what this one measures.
//
// usage: fwd TUN LOCAL_PORT PEER_IPV4 PEER_PORT [batch] [aead]
//   batch: run as SCHED_BATCH (hand-offs, as overlayd's workers while the CPU is free)
//   aead:  seal each packet as a WireGuard transport message (16-byte header: type,
//          receiver index, 64-bit counter; ChaCha20-Poly1305 with the counter as nonce,
//          libsodium) and open and replay-check it on the way in: the AEAD work of a real
//          WireGuard data packet, with a fixed key (no handshake: a measuring tool only).
//          Only when built with -DWITH_SODIUM -lsodium.
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
#ifdef WITH_SODIUM
#include <sodium.h>
#endif

#define WG_HDR 16
#define WG_TAG 16

static int aead;
#ifdef WITH_SODIUM
static unsigned long long tx_counter, rx_last;
static unsigned char key[32];
#endif

// Seals `len` bytes of `in` into `out` as a transport message; the message's length.
static ssize_t seal(const unsigned char *in, ssize_t len, unsigned char *out) {
    if (!aead) { memcpy(out, in, len); return len; }
#ifdef WITH_SODIUM
    unsigned char nonce[12] = {0};
    out[0] = 4; out[1] = out[2] = out[3] = 0;
    memset(out + 4, 0, 4);
    memcpy(out + 8, &tx_counter, 8);
    memcpy(nonce + 4, &tx_counter, 8);
    tx_counter++;
    unsigned long long clen;
    crypto_aead_chacha20poly1305_ietf_encrypt(out + WG_HDR, &clen, in, len, NULL, 0, NULL, nonce, key);
    return WG_HDR + (ssize_t)clen;
#else
    return -1;
#endif
}

// Opens a transport message into `out`; the plaintext's length, or -1 (dropped).
static ssize_t open_msg(const unsigned char *in, ssize_t len, unsigned char *out) {
    if (!aead) { memcpy(out, in, len); return len; }
#ifdef WITH_SODIUM
    if (len < WG_HDR + WG_TAG || in[0] != 4) return -1;
    unsigned long long counter, mlen;
    memcpy(&counter, in + 8, 8);
    if (rx_last && counter <= rx_last - 1) return -1; // replayed (a 1-packet window is enough here)
    unsigned char nonce[12] = {0};
    memcpy(nonce + 4, &counter, 8);
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + WG_HDR, len - WG_HDR, NULL, 0, nonce, key))
        return -1;
    rx_last = counter + 1;
    return (ssize_t)mlen;
#else
    return -1;
#endif
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: fwd TUN LOCAL_PORT PEER_IPV4 PEER_PORT [batch]\n");
        return 2;
    }
    int batch = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "batch")) batch = 1;
        else if (!strcmp(argv[i], "aead")) aead = 1;
        else { fprintf(stderr, "fwd: unknown option %s\n", argv[i]); return 2; }
    }
#ifdef WITH_SODIUM
    if (aead && sodium_init() < 0) { fprintf(stderr, "fwd: libsodium failed to start\n"); return 1; }
    memset(key, 0x42, sizeof key);
#else
    if (aead) { fprintf(stderr, "fwd: built without libsodium: no aead\n"); return 2; }
#endif
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
    static unsigned char buf[2048], msg[2048 + WG_HDR + WG_TAG];
    for (;;) {
        if (poll(fds, 2, -1) < 0) continue;
        ssize_t n;
        while ((n = recv(sock, msg, sizeof msg, 0)) > 0)
            if ((n = open_msg(msg, n, buf)) >= 0) (void)!write(tun, buf, n);
        // The kernel answers inside the write (an echo reply): read it now, while awake.
        while ((n = read(tun, buf, sizeof buf)) > 0)
            sendto(sock, msg, seal(buf, n, msg), 0, (void *)&peer, sizeof peer);
    }
}
