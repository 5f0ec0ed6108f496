/* arenapool._pymalloc_c: walk CPython 3.11's small-object allocator (pymalloc) and give
 * the pages of its empty pools back to the OS.
 *
 * pymalloc carves 1 MiB arenas into 16 KiB pools. An arena goes back to the OS only
 * when every one of its pools is empty; one live object keeps all of its pages
 * resident, including those of pools that emptied long ago and sit on the arena's
 * free-pool list. After a load, a handful of long-lived objects scattered over the
 * arenas the load made keep megabytes resident that hold nothing.
 *
 * For each pool on an arena's free list this keeps the pool's first page (its header:
 * the list link lives there) and madvise(MADV_DONTNEED)s the rest, after setting the
 * header's size-class index to a value no size class has. pymalloc then initialises
 * the pool afresh when it next takes it (a fresh pool header, a fresh free list),
 * instead of reusing the free list it kept in the dropped pages, and those pages come
 * back as zeros on first touch.
 *
 * Everything runs with the GIL held and allocates nothing until the walk is over:
 * pymalloc is only ever entered with the GIL, so no pool changes hands under the walk.
 * The first pass only reads and checks; the second acts only if the first found the
 * lists consistent. The layouts below are CPython 3.11's (Objects/obmalloc.c), and the
 * Python side (arenapool/_pymalloc.py) checks them against the running interpreter
 * before it calls in here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <sys/mman.h>

struct pool_header {
    union {
        void *padding;
        unsigned int count; /* blocks allocated from the pool */
    } ref;
    void *freeblock;
    struct pool_header *nextpool;
    struct pool_header *prevpool;
    unsigned int arenaindex;
    unsigned int szidx;
    unsigned int nextoffset;
    unsigned int maxnextoffset;
};

struct arena_object {
    uintptr_t address; /* 0: the slot holds no arena */
    void *pool_address;
    unsigned int nfreepools;
    unsigned int ntotalpools;
    struct pool_header *freepools;
    struct arena_object *nextarena;
    struct arena_object *prevarena;
};

/* pymalloc's size classes are 0..63: this one matches none of them */
#define RELEASED_SZIDX 0xFFFFFFFFu

typedef struct {
    unsigned long long arenas;   /* slots holding an arena */
    unsigned long long free;     /* pools on the arenas' free lists */
    unsigned long long released; /* of those, already released (still not reused) */
    int probe_found;             /* the probe address lies in one of the arenas */
} walk_result;

/* Read-only pass: 0 when the lists look like pymalloc's, else a reason. */
static const char *
check(struct arena_object *arenas, size_t slots, size_t pool_size, size_t arena_size,
      uintptr_t probe, walk_result *out)
{
    size_t max_pools = arena_size / pool_size;
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < slots; i++) {
        struct arena_object *a = &arenas[i];
        if (a->address == 0) {
            continue;
        }
        out->arenas++;
        if (a->ntotalpools > max_pools || a->nfreepools > a->ntotalpools) {
            return "an arena's pool counts are out of range";
        }
        if (probe >= a->address && probe < a->address + arena_size) {
            out->probe_found = 1;
        }
        size_t seen = 0;
        for (struct pool_header *p = a->freepools; p != NULL; p = p->nextpool) {
            uintptr_t at = (uintptr_t)p;
            if (at < a->address || at + pool_size > a->address + arena_size
                || (at & (pool_size - 1)) != 0) {
                return "a free pool lies outside its arena";
            }
            if (p->ref.count != 0) {
                return "a free pool has blocks allocated";
            }
            if (++seen > a->nfreepools) {
                return "an arena's free list is longer than its free count";
            }
            out->free++;
            if (p->szidx == RELEASED_SZIDX) {
                out->released++;
            }
        }
    }
    return NULL;
}

/* One walk's inputs, read from the call's arguments and the globals they point at. */
typedef struct {
    struct arena_object *arenas;
    size_t slots, pool_size, arena_size, page;
    uintptr_t probe;
    unsigned long long counted; /* the size_t at narenas_at, 0 when that is 0 */
    walk_result res;
} walk;

/* Parse ``(arenas_at, maxarenas_at, pool_size, arena_size, page, probe, narenas_at)``,
 * read the globals and run the read-only check; -1 with an exception set if any fails.
 * Nothing allocates from the reads to the end of the caller's walk. */
static int
prepare(PyObject *args, walk *w)
{
    unsigned long long arenas_at, slots_at, pool, arena, pg, pr, narenas_at;
    if (!PyArg_ParseTuple(args, "KKKKKKK", &arenas_at, &slots_at, &pool, &arena, &pg, &pr,
                          &narenas_at)) {
        return -1;
    }
    if (arenas_at == 0 || slots_at == 0 || pool == 0 || (pool & (pool - 1)) != 0
        || arena % pool != 0 || pg == 0 || pool <= pg || pool % pg != 0) {
        PyErr_SetString(PyExc_ValueError, "bad allocator geometry");
        return -1;
    }
    w->arenas = *(struct arena_object **)(uintptr_t)arenas_at;
    w->slots = *(unsigned int *)(uintptr_t)slots_at;
    w->pool_size = (size_t)pool;
    w->arena_size = (size_t)arena;
    w->page = (size_t)pg;
    w->probe = (uintptr_t)pr;
    w->counted = narenas_at == 0 ? 0 : *(size_t *)(uintptr_t)narenas_at;
    const char *bad = w->arenas == NULL
        ? "no arenas"
        : check(w->arenas, w->slots, w->pool_size, w->arena_size, w->probe, &w->res);
    if (bad != NULL) {
        PyErr_SetString(PyExc_ValueError, bad);
        return -1;
    }
    return 0;
}

/* The survey (``act`` 0: read only) or the release (``act`` 1), after prepare(). */
static PyObject *
run(PyObject *args, int act)
{
    walk w;
    if (prepare(args, &w) < 0) {
        return NULL;
    }
    if (!act) {
        return Py_BuildValue("KKKOK", w.res.arenas, w.res.free, w.res.released,
                             w.res.probe_found ? Py_True : Py_False, w.counted);
    }
    unsigned long long advised = 0, pools = 0;
    for (size_t i = 0; i < w.slots; i++) {
        struct arena_object *a = &w.arenas[i];
        if (a->address == 0) {
            continue;
        }
        for (struct pool_header *p = a->freepools; p != NULL; p = p->nextpool) {
            if (p->szidx == RELEASED_SZIDX) {
                continue;
            }
            p->szidx = RELEASED_SZIDX;
            if (madvise((char *)p + w.page, w.pool_size - w.page, MADV_DONTNEED) == 0) {
                advised += w.pool_size - w.page;
                pools++;
            }
        }
    }
    return Py_BuildValue("KKK", advised, pools, w.res.free);
}

static PyObject *
survey(PyObject *module, PyObject *args)
{
    (void)module;
    return run(args, 0);
}

static PyObject *
release(PyObject *module, PyObject *args)
{
    (void)module;
    return run(args, 1);
}

PyDoc_STRVAR(survey_doc,
"survey(arenas_at, maxarenas_at, pool_size, arena_size, page, probe, narenas_at) -> tuple\n\n"
"Read pymalloc's arenas (the addresses of its ``arenas`` and ``maxarenas`` globals)\n"
"without changing anything: ``(arenas, free_pools, released_pools, probe_found,\n"
"counted)``, ``counted`` being the ``size_t`` at ``narenas_at`` read in the same pass\n"
"(0 when ``narenas_at`` is 0). ValueError when the lists do not look like pymalloc's.");

PyDoc_STRVAR(release_doc,
"release(arenas_at, maxarenas_at, pool_size, arena_size, page, probe, narenas_at) -> tuple\n\n"
"Check the free-pool lists as :func:`survey` does, then give back every free pool's\n"
"pages but its first: ``(bytes_advised, pools_released, free_pools)``. Pools\n"
"released before and not reused since are skipped.");

static PyMethodDef methods[] = {
    {"survey", survey, METH_VARARGS, survey_doc},
    {"release", release, METH_VARARGS, release_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "arenapool._pymalloc_c",
    .m_doc = "Give the pages of pymalloc's empty pools back to the OS (see arenapool._pymalloc).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__pymalloc_c(void)
{
    return PyModule_Create(&module_def);
}
