/* arenapool._blockcache_c: large blocks of CPython's PyMem_Malloc, from a region of our own.
 *
 * A JSON decoder's work buffer is the largest transient allocation a request makes:
 * orjson (3.x, its yyjson backend) takes PyMem_Malloc(about 12 x the document) for every
 * loads() and frees it before returning; it touches the document's copy and the parsed
 * values, 2-4 x the document. glibc serves it from the main heap, where its pages stay
 * resident until someone trims, or from a fresh mapping, which faults in on every call.
 *
 * This module sits in front of PyMem's MEM domain (PyMem_SetAllocator, CPython's public
 * hook; after initialisation CPython supports only an allocator that wraps the one it
 * replaces, as this one does: every block it does not serve goes to that one).
 * Allocations of at least ``min_size`` bytes come from one reserved region of address
 * space (MAP_NORESERVE: nothing is committed until touched), first fit from the lowest
 * address. Since a decoder's buffers come and go one at a time, each new one lands
 * where the last one was and reuses its pages warm. Blocks below the region's ``warm``
 * offset keep their pages when freed; the part of a freed block above it is given back at
 * once (madvise(MADV_DONTNEED)). So the process holds at most ``warm`` bytes of these
 * pages between requests, however large the largest document was. release() gives back
 * the free pages below ``warm`` too (arenapool's governor calls it when the server goes
 * idle). Installed with ``huge`` set, the region is advised MADV_HUGEPAGE and gives back
 * only whole huge pages: its pages fault in 2 MiB at a time.
 *
 * Smaller allocations, calloc, realloc of blocks that are not ours, and whatever does not
 * fit in the region go to the allocator underneath, untouched. A block is ours exactly
 * when its address lies in the region: one comparison on every PyMem_Free.
 *
 * The MEM domain is entered with the GIL held (CPython's rule for PyMem_Malloc), but
 * since 3.12 an interpreter may have a GIL of its own, so the region's bookkeeping takes
 * a mutex: only on the region's own blocks, never on the path of the blocks passed
 * through. The hook stays installed for the life of the process (blocks in the region
 * may be freed at any time).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE ((size_t)4096)
#define HUGE_PAGE ((size_t)2 << 20)
#define HEADER ((size_t)64) /* a block's length, before the pointer handed out */
#define MAX_EXTENTS 1024

typedef struct {
    size_t start; /* offset into the region */
    size_t len;
} extent;

static char *region = NULL;
static size_t region_size = 0;
static size_t min_size = 0;
static size_t warm = 0;
static size_t grain = PAGE; /* what a free gives back in: pages, or whole huge pages */
static int installed = 0;
static int hugeable = 0; /* the region starts on a huge page boundary */
static PyMemAllocatorEx under;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static extent free_list[MAX_EXTENTS]; /* sorted by start, no two adjacent */
static Py_ssize_t nfree = 0;

/* counters since install: blocks the region handed out (served), blocks of min_size or
 * more it had no room for (passed), blocks given back to it (returned); bytes */
static unsigned long long served = 0, passed = 0, returned = 0;
static size_t in_use = 0, peak = 0, given_back = 0, high = 0;

/* freed blocks that had pages resident above ``warm`` (over), and those pages' bytes
 * (over_bytes): what the decodes that reach past the bound fault in again */
static unsigned long long over = 0;
static size_t over_bytes = 0;
/* the same pages' bytes by where they lay, a MiB of the region a bucket (the last one
 * takes everything past it), since take_spread() last read them: how much a lower or
 * higher bound would have given back in use */
#define SPREAD_SHIFT 20
#define SPREAD_BUCKETS ((size_t)256)
static size_t spread[SPREAD_BUCKETS];
#define VEC_PAGES ((size_t)4096)
static unsigned char vec[VEC_PAGES]; /* mincore's answer, a chunk at a time; under lock */

static inline int
ours(const void *ptr)
{
    return (uintptr_t)ptr - (uintptr_t)region < region_size;
}

/* n rounded up to a multiple of ``unit`` (a power of two) */
static inline size_t
round_up(size_t n, size_t unit)
{
    return (n + unit - 1) & ~(unit - 1);
}

/* give back the pages of [start, start + len) above ``floor``, in whole units of ``unit``
 * bytes (a power of two; a huge page split by a partial madvise would fault back in
 * 4 KiB at a time) */
static void
drop_above(size_t start, size_t len, size_t floor, size_t unit)
{
    size_t end = start + len;
    if (start < floor) {
        start = floor;
    }
    start = round_up(start, unit);
    end &= ~(unit - 1);
    if (end <= start) {
        return;
    }
    if (madvise(region + start, end - start, MADV_DONTNEED) == 0) {
        given_back += end - start;
    }
}

/* a block of at least n bytes from the region, or NULL; called with the lock held */
static void *
take(size_t n)
{
    if (n > region_size - HEADER) {
        return NULL;
    }
    size_t need = round_up(n + HEADER, PAGE);
    for (Py_ssize_t i = 0; i < nfree; i++) {
        if (free_list[i].len >= need) {
            size_t start = free_list[i].start;
            free_list[i].start += need;
            free_list[i].len -= need;
            if (free_list[i].len == 0) {
                memmove(free_list + i, free_list + i + 1, (size_t)(nfree - i - 1) * sizeof(extent));
                nfree--;
            }
            char *base = region + start;
            *(size_t *)base = need;
            in_use += need;
            if (in_use > peak) {
                peak = in_use;
            }
            if (start + need > high) {
                high = start + need;
            }
            served++;
            return base + HEADER;
        }
    }
    return NULL;
}

/* put [start, start + len) back on the free list, merging with its neighbours; returns
 * the free extent it is now part of, or -1 when the list is full (the range is then lost
 * to the region: it stays unused, its pages given back) */
static Py_ssize_t
put(size_t start, size_t len)
{
    Py_ssize_t i = 0;
    while (i < nfree && free_list[i].start < start) {
        i++;
    }
    int left = i > 0 && free_list[i - 1].start + free_list[i - 1].len == start;
    int right = i < nfree && start + len == free_list[i].start;
    if (left && right) {
        free_list[i - 1].len += len + free_list[i].len;
        memmove(free_list + i, free_list + i + 1, (size_t)(nfree - i - 1) * sizeof(extent));
        nfree--;
        return i - 1;
    }
    if (left) {
        free_list[i - 1].len += len;
        return i - 1;
    }
    if (right) {
        free_list[i].start = start;
        free_list[i].len += len;
        return i;
    }
    if (nfree == MAX_EXTENTS) {
        drop_above(start, len, 0, PAGE);
        return -1;
    }
    memmove(free_list + i + 1, free_list + i, (size_t)(nfree - i) * sizeof(extent));
    free_list[i].start = start;
    free_list[i].len = len;
    nfree++;
    return i;
}

/* bytes of the region's pages resident in [start, end) (offsets, whole pages); with
 * ``by_mib`` set, each of them is also counted in its MiB's bucket of spread[]; called
 * with the lock held */
static size_t
resident_in(size_t start, size_t end, int by_mib)
{
    size_t count = 0;
    while (start < end) {
        size_t pages = (end - start) / PAGE;
        if (pages > VEC_PAGES) {
            pages = VEC_PAGES;
        }
        if (mincore(region + start, pages * PAGE, vec) != 0) {
            return count * PAGE;
        }
        for (size_t i = 0; i < pages; i++) {
            if (vec[i] & 1) {
                count++;
                if (by_mib) {
                    size_t at = (start + i * PAGE) >> SPREAD_SHIFT;
                    spread[at < SPREAD_BUCKETS ? at : SPREAD_BUCKETS - 1] += PAGE;
                }
            }
        }
        start += pages * PAGE;
    }
    return count * PAGE;
}

/* a block back to the region; called with the lock held */
static void
give(void *ptr)
{
    char *base = (char *)ptr - HEADER;
    size_t len = *(size_t *)base;
    size_t start = (size_t)(base - region);
    in_use -= len;
    returned++;
    Py_ssize_t at = put(start, len);
    if (at < 0) {
        return;
    }
    if (grain == PAGE) {
        size_t from = round_up(start > warm ? start : warm, PAGE);
        size_t to = start + len; /* a whole number of pages: take() rounds blocks up */
        if (to > from) {
            /* before they go: how much of the block above the bound was in use, and where */
            size_t above = resident_in(from, to, 1);
            if (above > 0) {
                over++;
                over_bytes += above;
            }
        }
        drop_above(start, len, warm, PAGE);
        return;
    }
    /* In huge pages, the whole ones of the free extent the block joined: its edges may
     * share a huge page with a neighbour freed earlier. Nothing past ``high`` was ever
     * touched. */
    size_t from = free_list[at].start;
    size_t to = free_list[at].start + free_list[at].len;
    size_t top = round_up(high, grain);
    if (to > top) {
        to = top;
    }
    if (to > from) {
        drop_above(from, to - from, warm, grain);
    }
}

static void *
hook_malloc(void *ctx, size_t n)
{
    (void)ctx;
    if (n >= min_size) {
        pthread_mutex_lock(&lock);
        void *p = take(n);
        if (p == NULL) {
            passed++;
        }
        pthread_mutex_unlock(&lock);
        if (p != NULL) {
            return p;
        }
    }
    return under.malloc(under.ctx, n);
}

static void *
hook_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    return under.calloc(under.ctx, nelem, elsize);
}

static void *
hook_realloc(void *ctx, void *ptr, size_t n)
{
    (void)ctx;
    if (ptr == NULL) {
        return hook_malloc(NULL, n);
    }
    if (!ours(ptr)) {
        return under.realloc(under.ctx, ptr, n);
    }
    size_t have = *(size_t *)((char *)ptr - HEADER) - HEADER;
    if (n <= have) {
        return ptr;
    }
    void *fresh = hook_malloc(NULL, n);
    if (fresh == NULL) {
        return NULL;
    }
    memcpy(fresh, ptr, have);
    pthread_mutex_lock(&lock);
    give(ptr);
    pthread_mutex_unlock(&lock);
    return fresh;
}

static void
hook_free(void *ctx, void *ptr)
{
    (void)ctx;
    if (ours(ptr)) {
        pthread_mutex_lock(&lock);
        give(ptr);
        pthread_mutex_unlock(&lock);
        return;
    }
    under.free(under.ctx, ptr);
}

static PyObject *
install(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t lo, size, keep;
    int huge = 0;
    if (!PyArg_ParseTuple(args, "nnn|p", &lo, &size, &keep, &huge)) {
        return NULL;
    }
    if (lo < (Py_ssize_t)PAGE || keep < 0 || size < (Py_ssize_t)PAGE) {
        PyErr_SetString(PyExc_ValueError, "min_size and region must be at least a page, warm >= 0");
        return NULL;
    }
    if (!installed) {
        void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        region = (char *)m;
        region_size = (size_t)size;
        /* Linux (6.7 on) places a mapping whose length is a whole number of huge pages
         * on their boundary; elsewhere the region keeps small pages */
        hugeable = ((uintptr_t)m & (HUGE_PAGE - 1)) == 0 && size % (Py_ssize_t)HUGE_PAGE == 0;
        free_list[0].start = 0;
        free_list[0].len = region_size;
        nfree = 1;
        PyMemAllocatorEx mine = {NULL, hook_malloc, hook_calloc, hook_realloc, hook_free};
        PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &under);
        PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mine);
        installed = 1;
    }
    pthread_mutex_lock(&lock);
    min_size = (size_t)lo;
    /* a kernel whose THP mode is "never" refuses the advice: small pages, then */
    if (huge && hugeable && madvise(region, region_size, MADV_HUGEPAGE) == 0) {
        grain = HUGE_PAGE;
    }
    else {
        if (grain == HUGE_PAGE) {
            madvise(region, region_size, MADV_NOHUGEPAGE);
        }
        grain = PAGE;
    }
    warm = round_up((size_t)keep, grain);
    pthread_mutex_unlock(&lock);
    return PyBool_FromLong(1);
}

/* give back the free pages above ``floor`` */
static PyObject *
release(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_ssize_t floor = PyLong_AsSsize_t(arg);
    if (floor == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (floor < 0) {
        PyErr_SetString(PyExc_ValueError, "floor must not be negative");
        return NULL;
    }
    pthread_mutex_lock(&lock);
    size_t before = given_back;
    size_t top = round_up(high, grain);
    for (Py_ssize_t i = 0; i < nfree; i++) {
        size_t end = free_list[i].start + free_list[i].len;
        if (end > top) {
            end = top; /* past the highest block ever handed out nothing was touched */
        }
        if (end > free_list[i].start) {
            drop_above(free_list[i].start, end - free_list[i].start, (size_t)floor, grain);
        }
    }
    size_t done = given_back - before;
    pthread_mutex_unlock(&lock);
    return PyLong_FromSize_t(done);
}

/* the region's pages resident now (mincore over what was ever handed out); called with
 * the lock held */
static size_t
resident(void)
{
    return resident_in(0, round_up(high, PAGE), 0);
}

static PyObject *
is_installed(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(installed);
}

static PyObject *
stats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    pthread_mutex_lock(&lock);
    size_t res = installed ? resident() : 0;
    size_t now[8] = {min_size, warm, region_size, in_use, peak, given_back, grain, over_bytes};
    unsigned long long counts[4] = {served, passed, returned, over};
    pthread_mutex_unlock(&lock);
    return Py_BuildValue("(innnnnnKKKnnKn)", installed, (Py_ssize_t)now[0], (Py_ssize_t)now[1],
                         (Py_ssize_t)now[2], (Py_ssize_t)now[3], (Py_ssize_t)now[4],
                         (Py_ssize_t)res, counts[0], counts[1], counts[2], (Py_ssize_t)now[5],
                         (Py_ssize_t)now[6], counts[3], (Py_ssize_t)now[7]);
}

static PyObject *
take_spread(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    size_t now[SPREAD_BUCKETS];
    pthread_mutex_lock(&lock);
    unsigned long long freed = returned;
    size_t bound = warm;
    size_t used = 0; /* buckets up to the last one that is not empty */
    for (size_t i = 0; i < SPREAD_BUCKETS; i++) {
        now[i] = spread[i];
        if (spread[i] != 0) {
            used = i + 1;
            spread[i] = 0;
        }
    }
    pthread_mutex_unlock(&lock);
    PyObject *by_mib = PyTuple_New((Py_ssize_t)used);
    if (by_mib == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < used; i++) {
        PyObject *n = PyLong_FromSize_t(now[i]);
        if (n == NULL) {
            Py_DECREF(by_mib);
            return NULL;
        }
        PyTuple_SET_ITEM(by_mib, (Py_ssize_t)i, n);
    }
    return Py_BuildValue("(KnN)", freed, (Py_ssize_t)bound, by_mib);
}

static PyMethodDef methods[] = {
    {"install", install, METH_VARARGS,
     "install(min_size, region, warm) -> True: serve PyMem_Malloc's blocks of at least "
     "min_size bytes from a region of ``region`` bytes (reserved the first time), keeping "
     "the pages of freed blocks below ``warm`` bytes into it."},
    {"release", release, METH_O,
     "release(floor) -> int: give back the free pages above ``floor`` bytes into the region."},
    {"installed", is_installed, METH_NOARGS,
     "installed() -> bool: whether the front is in place (cheaper than stats())."},
    {"stats", stats, METH_NOARGS,
     "stats() -> (installed, min_size, warm, region, in_use, peak, resident, served, passed, "
     "freed, given_back, grain, over, over_bytes)"},
    {"take_spread", take_spread, METH_NOARGS,
     "take_spread() -> (freed, warm, by_mib): blocks freed ever, the warm bound, and the "
     "bytes of pages in use above ``warm`` that freed blocks gave back, by MiB of the "
     "region, since the last call (which it resets); no mincore of its own."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "arenapool._blockcache_c",
    "Large PyMem blocks from a region of arenapool's own (see arenapool/_blockcache.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__blockcache_c(void)
{
    return PyModule_Create(&module);
}
