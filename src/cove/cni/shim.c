/* cove-cni, compiled: the CNI plugin's fast path.
 *
 * A runtime starts the plugin three times per attachment (VERSION twice,
 * then ADD), so its start is the cost of an attach. This shim answers
 * VERSION itself and hands every other call whole to the cove agent
 * (POST /api/cni/exec on its Unix socket: the CNI_* variables as X-Cni-*
 * headers, stdin as the body), which runs cove.cni.plugin in-process and
 * answers what the plugin prints. Whenever anything is unusual (a
 * configuration it cannot read simply, an agent it cannot reach, an answer
 * it does not expect) it runs the Python plugin (COVE_CNI_PY) with the same
 * stdin and environment instead, which gives the proper CNI error.
 *
 * It parses no JSON: it only looks up the top-level "cniVersion" (VERSION)
 * and "agentSocket" string values, and gives up (to the Python plugin) on
 * anything but plain characters in them. Written by `cove cni install`,
 * built with the system's C compiler.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef COVE_CNI_PY
#define COVE_CNI_PY "/usr/lib/cni/cove-cni.py"
#endif
#define MAX_INPUT (16 << 20)
#define DEFAULT_SOCKET "/run/cove/agent.sock"

static const char *SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", NULL};
static const char *ENV[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                            "CNI_IFNAME",  "CNI_ARGS",        "CNI_PATH", NULL};
static const char *HEADER[] = {"X-Cni-Command", "X-Cni-Containerid", "X-Cni-Netns",
                               "X-Cni-Ifname",  "X-Cni-Args",        "X-Cni-Path", NULL};

static char *read_fd(int fd, size_t *len) {
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_INPUT) { free(buf); return NULL; }
            cap *= 2;
            char *more = realloc(buf, cap + 1);
            if (!more) { free(buf); return NULL; }
            buf = more;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { free(buf); return NULL; }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The value of "key": "value" at the top level of a JSON object, copied to
 * out; -1 when absent, nested only, or not made of plain characters. */
static int top_string(const char *s, size_t len, const char *key, char *out, size_t outlen) {
    int depth = 0, in_str = 0;
    size_t klen = strlen(key);
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\') { i++; continue; }
            if (c == '"') in_str = 0;
            continue;
        }
        if (c == '{' || c == '[') { depth++; continue; }
        if (c == '}' || c == ']') { depth--; continue; }
        if (c != '"') continue;
        if (depth == 1 && i + klen + 1 < len && strncmp(s + i + 1, key, klen) == 0 &&
            s[i + 1 + klen] == '"') {
            size_t j = i + klen + 2;
            while (j < len && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
            if (j >= len || s[j] != ':') return -1;
            j++;
            while (j < len && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
            if (j >= len || s[j] != '"') return -1;
            j++;
            size_t k = 0;
            while (j < len && s[j] != '"') {
                unsigned char ch = (unsigned char)s[j];
                if (ch == '\\' || ch < 0x20 || ch >= 0x7f || k + 1 >= outlen) return -1;
                out[k++] = (char)ch;
                j++;
            }
            if (j >= len) return -1;
            out[k] = 0;
            return 0;
        }
        in_str = 1;
    }
    return -1;
}

/* Run the Python plugin with the same environment and stdin. */
static int fallback(const char *in, size_t len) {
    int fds[2];
    if (pipe(fds) < 0) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        dup2(fds[0], 0);
        close(fds[0]);
        close(fds[1]);
        execl(COVE_CNI_PY, COVE_CNI_PY, (char *)NULL);
        fprintf(stderr, "cove-cni: cannot run %s: %s\n", COVE_CNI_PY, strerror(errno));
        _exit(127);
    }
    close(fds[0]);
    write_all(fds[1], in, len);
    close(fds[1]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int version(const char *in, size_t len) {
    char v[16];
    if (top_string(in, len, "cniVersion", v, sizeof v) < 0) return -1;
    for (int i = 0; SUPPORTED[i]; i++) {
        if (strcmp(v, SUPPORTED[i]) == 0) {
            printf("{\"cniVersion\": \"%s\", \"supportedVersions\": [\"0.3.0\", \"0.3.1\", "
                   "\"0.4.0\", \"1.0.0\", \"1.1.0\"]}",
                   v);
            return 0;
        }
    }
    return -1;
}

/* The whole call through the agent; -1 to fall back. */
static int through_agent(const char *in, size_t len) {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    if (top_string(in, len, "agentSocket", path, sizeof path) < 0) {
        if (strstr(in, "\"agentSocket\"")) return -1; /* there, but not plain */
        strcpy(path, DEFAULT_SOCKET);
    }
    size_t cap = 1024 + len;
    for (int i = 0; ENV[i]; i++) {
        const char *v = getenv(ENV[i]);
        if (v) cap += strlen(HEADER[i]) + strlen(v) + 4;
    }
    char *req = malloc(cap);
    if (!req) return -1;
    size_t n = (size_t)snprintf(req, cap, "POST /api/cni/exec HTTP/1.1\r\nHost: localhost\r\n"
                                          "Connection: close\r\nContent-Length: %zu\r\n", len);
    for (int i = 0; ENV[i]; i++) {
        const char *v = getenv(ENV[i]);
        if (!v) continue;
        if (strpbrk(v, "\r\n")) { free(req); return -1; }
        n += (size_t)snprintf(req + n, cap - n, "%s: %s\r\n", HEADER[i], v);
    }
    n += (size_t)snprintf(req + n, cap - n, "\r\n");
    memcpy(req + n, in, len);
    n += len;

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        write_all(fd, req, n) < 0) {
        if (fd >= 0) close(fd);
        free(req);
        return -1;
    }
    free(req);
    size_t rlen = 0;
    char *resp = read_fd(fd, &rlen);
    close(fd);
    if (!resp) return -1;
    int status = 0;
    char *body = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !body || (status != 200 && status != 422)) {
        free(resp);
        return -1;
    }
    body += 4;
    write_all(1, body, rlen - (size_t)(body - resp));
    if (status != 200) {
        fprintf(stderr, "cove-cni: %s\n", body);
    }
    free(resp);
    return status == 200 ? 0 : 1;
}

int main(void) {
    size_t len = 0;
    char *in = read_fd(0, &len);
    if (!in) return fallback("", 0);
    const char *cmd = getenv("CNI_COMMAND");
    int rc = -1;
    if (cmd && strcmp(cmd, "VERSION") == 0) {
        rc = version(in, len);
    } else if (cmd && *cmd) {
        rc = through_agent(in, len);
    }
    if (rc < 0) rc = fallback(in, len);
    free(in);
    return rc;
}
