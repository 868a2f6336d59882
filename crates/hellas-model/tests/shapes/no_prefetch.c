/* Preloaded into llama-server by catalog_shapes.rs so that a shape-only GGUF stays unread.
 *
 * llama.cpp maps a model with MAP_POPULATE and posix_madvise(WILLNEED) (llama_mmap), which
 * makes the kernel fault in the whole file at once: for a sparse 140 GB test file that is
 * 140 GB of zero pages pushed through the page cache. Without the two hints the mapping is
 * faulted in on first touch only, and the test stops llama-server before anything touches it
 * (after the buffers are sized, before the first decode). The buffer sizes llama.cpp logs do
 * not depend on either hint.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/types.h>

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*madvise_fn)(void *, size_t, int);

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    static mmap_fn real;
    if (!real) real = (mmap_fn)dlsym(RTLD_NEXT, "mmap");
    return real(addr, len, prot, flags & ~MAP_POPULATE, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap(addr, len, prot, flags, fd, off);
}

int posix_madvise(void *addr, size_t len, int advice) {
    static madvise_fn real;
    if (advice == POSIX_MADV_WILLNEED) return 0;
    if (!real) real = (madvise_fn)dlsym(RTLD_NEXT, "posix_madvise");
    return real(addr, len, advice);
}
