/* arenapool._arenacache_c: keep the arenas pymalloc frees, for it to take again.
 *
 * pymalloc (CPython's small-object allocator) maps 1 MiB arenas and unmaps one as soon
 * as its last object dies, keeping at most one empty arena. A large JSON decode makes
 * and drops megabytes of small objects: their arenas are mapped, faulted in page by
 * page (each page zeroed by the kernel), then unmapped, on every such request
 * (benchmarks/arena_cache.py measures it; benchmarks/README.md has the figures).
 *
 * This module installs an arena allocator (PyObject_SetArenaAllocator, CPython's public
 * hook for exactly this) in front of the one it replaces. An arena pymalloc frees goes
 * on a stack instead of back to the OS, with the time it came; the next arena pymalloc
 * asks for comes off the top of the stack (the warmest, its pages still resident).
 * Only when the stack is full does a freed arena go to the allocator underneath.
 * Nothing is given back on pymalloc's path: release() hands the arenas at the bottom of
 * the stack (idle longest) to the allocator underneath, which unmaps them; arenapool's
 * governor calls it off the request path, on a timer and when the server goes idle.
 *
 * Every function here runs with the GIL held: pymalloc calls the allocator with it, and
 * the Python-level functions are called with it. So the stack needs no lock of its own.
 * The allocator underneath is only ever called with the GIL held too, as pymalloc would.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <time.h>

/* the most arenas the stack can hold: 4 GiB of 1 MiB arenas */
#define MAX_CACHED 4096

typedef struct {
    void *ptr;
    size_t size;
    uint64_t since_ns; /* CLOCK_MONOTONIC when pymalloc freed it */
} entry;

static entry stack[MAX_CACHED]; /* [0] idle longest, [count - 1] the warmest */
static Py_ssize_t count = 0;
static Py_ssize_t limit = 0; /* most arenas kept; 0 keeps none */
static size_t cached_bytes = 0;
static int installed = 0;
static PyObjectArenaAllocator under; /* the allocator this one sits in front of */

/* counters since install: arenas pymalloc took from the stack (hits) and from the
 * allocator underneath (misses), arenas it freed onto the stack (kept) and past a full
 * stack (overflow), and arenas release() gave back */
static unsigned long long hits = 0, misses = 0, kept = 0, overflow = 0, released = 0;

static uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *
cached_alloc(void *ctx, size_t size)
{
    (void)ctx;
    /* pymalloc asks for one size only (ARENA_SIZE): the top entry fits, or none does */
    if (count > 0 && stack[count - 1].size == size) {
        count--;
        cached_bytes -= size;
        hits++;
        return stack[count].ptr;
    }
    misses++;
    return under.alloc(under.ctx, size);
}

static void
cached_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr == NULL) {
        return;
    }
    if (count < limit) {
        stack[count].ptr = ptr;
        stack[count].size = size;
        stack[count].since_ns = now_ns();
        count++;
        cached_bytes += size;
        kept++;
        return;
    }
    overflow++;
    under.free(under.ctx, ptr, size);
}

/* Give back up to ``most`` arenas from the bottom of the stack: those idle at least
 * ``older_ns``, leaving the ``keep`` warmest whatever their age. Returns the count. */
static Py_ssize_t
release_bottom(uint64_t older_ns, Py_ssize_t keep, Py_ssize_t most)
{
    uint64_t now = now_ns();
    Py_ssize_t n = 0;
    while (n < most && count - n > keep && now - stack[n].since_ns >= older_ns) {
        n++;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        cached_bytes -= stack[i].size;
        under.free(under.ctx, stack[i].ptr, stack[i].size);
    }
    if (n > 0) {
        memmove(stack, stack + n, (size_t)(count - n) * sizeof(entry));
        count -= n;
        released += (unsigned long long)n;
    }
    return n;
}

static PyObject *
install(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_ssize_t most = PyLong_AsSsize_t(arg);
    if (most == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (most < 0 || most > MAX_CACHED) {
        PyErr_Format(PyExc_ValueError, "limit must be 0 to %d arenas, got %zd", MAX_CACHED,
                     most);
        return NULL;
    }
    int fresh = !installed;
    if (fresh) {
        PyObjectArenaAllocator mine = {NULL, cached_alloc, cached_free};
        PyObject_GetArenaAllocator(&under);
        PyObject_SetArenaAllocator(&mine);
        installed = 1;
    }
    limit = most;
    if (count > limit) {
        release_bottom(0, limit, count - limit);
    }
    return PyBool_FromLong(fresh);
}

static PyObject *
release(PyObject *self, PyObject *args)
{
    (void)self;
    double older_than;
    Py_ssize_t keep, most;
    if (!PyArg_ParseTuple(args, "dnn", &older_than, &keep, &most)) {
        return NULL;
    }
    if (older_than < 0 || keep < 0 || most < 0) {
        PyErr_SetString(PyExc_ValueError, "older_than, keep and most must not be negative");
        return NULL;
    }
    uint64_t older_ns = (uint64_t)(older_than * 1e9);
    return PyLong_FromSsize_t(release_bottom(older_ns, keep, most));
}

static PyObject *
stats(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return Py_BuildValue("(innKKKKKK)", installed, limit, count,
                         (unsigned long long)cached_bytes, hits, misses, kept, overflow,
                         released);
}

static PyMethodDef methods[] = {
    {"install", install, METH_O,
     "install(limit) -> bool: put the cache in front of pymalloc's arena allocator (once; "
     "True the first time) and keep at most ``limit`` freed arenas."},
    {"release", release, METH_VARARGS,
     "release(older_than, keep, most) -> int: give back up to ``most`` cached arenas idle "
     "at least ``older_than`` seconds, longest idle first, keeping the ``keep`` warmest."},
    {"stats", stats, METH_NOARGS,
     "stats() -> (installed, limit, cached, cached_bytes, hits, misses, kept, overflow, "
     "released)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "arenapool._arenacache_c",
    "A cache of the arenas pymalloc frees (see arenapool/_arenacache.py).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__arenacache_c(void)
{
    return PyModule_Create(&module);
}
