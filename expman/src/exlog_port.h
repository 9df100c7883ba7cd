/* exlog_port.h: the few OS services the writer needs, behind one prefix.
 *
 * pthreads on Linux/macOS, Win32 on Windows. Atomics are only the two we need
 * (64-bit load-acquire / store-release, plus a 32-bit pair), written for
 * GCC/Clang builtins and MSVC intrinsics. No Python objects here.
 */
#ifndef EXLOG_PORT_H
#define EXLOG_PORT_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>     /* SEEK_SET: <io.h> does not define it on Windows */
#include <stdlib.h>    /* malloc/free in the POSIX thread trampoline */

#ifdef _WIN32
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#  include <process.h>
#  include <io.h>
#  include <sys/utime.h>
#else
#  include <pthread.h>
#  include <time.h>
#  include <unistd.h>
#  include <sys/stat.h>
#  include <sys/time.h>
#endif
#ifdef _MSC_VER
#  include <intrin.h>
#endif

/* ---- atomics ------------------------------------------------------------ */
#if defined(_MSC_VER) && !defined(__clang__)
static __inline uint64_t exlog_load_u64(const volatile uint64_t *p) {
#  if defined(_M_ARM64)
    return __ldar64((unsigned __int64 volatile *)p);
#  elif defined(_M_X64)
    uint64_t v = *p;            /* x64 loads are acquire; stop the compiler */
    _ReadWriteBarrier();
    return v;
#  else
    return (uint64_t)InterlockedCompareExchange64((volatile LONG64 *)p, 0, 0);
#  endif
}
static __inline void exlog_store_u64(volatile uint64_t *p, uint64_t v) {
#  if defined(_M_ARM64)
    __stlr64((unsigned __int64 volatile *)p, v);
#  elif defined(_M_X64)
    _ReadWriteBarrier();        /* x64 stores are release; stop the compiler */
    *p = v;
#  else
    InterlockedExchange64((volatile LONG64 *)p, (LONG64)v);
#  endif
}
static __inline int exlog_load_int(const volatile int *p) {
    return (int)InterlockedCompareExchange((volatile LONG *)p, 0, 0);
}
static __inline void exlog_store_int(volatile int *p, int v) {
    InterlockedExchange((volatile LONG *)p, (LONG)v);
}
#else
static inline uint64_t exlog_load_u64(const volatile uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void exlog_store_u64(volatile uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int exlog_load_int(const volatile int *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void exlog_store_int(volatile int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
#endif

/* ---- clocks ------------------------------------------------------------- */
/* Wall-clock time in nanoseconds since the Unix epoch. */
static inline int64_t exlog_wall_ns(void) {
#ifdef _WIN32
    FILETIME ft;
    ULARGE_INTEGER u;
    GetSystemTimePreciseAsFileTime(&ft);
    u.LowPart = ft.dwLowDateTime;
    u.HighPart = ft.dwHighDateTime;
    /* 100 ns ticks since 1601-01-01 */
    return ((int64_t)u.QuadPart - 116444736000000000LL) * 100;
#else
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

/* Monotonic milliseconds, for intervals and deadlines. */
static inline int64_t exlog_mono_ms(void) {
#ifdef _WIN32
    return (int64_t)GetTickCount64();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

/* ---- mutex, condition variable, thread ---------------------------------- */
#ifdef _WIN32
typedef SRWLOCK exlog_mutex;
typedef CONDITION_VARIABLE exlog_cond;
typedef HANDLE exlog_thread;

static inline int exlog_mutex_init(exlog_mutex *m) { InitializeSRWLock(m); return 0; }
static inline void exlog_mutex_destroy(exlog_mutex *m) { (void)m; }
static inline void exlog_mutex_lock(exlog_mutex *m) { AcquireSRWLockExclusive(m); }
static inline void exlog_mutex_unlock(exlog_mutex *m) { ReleaseSRWLockExclusive(m); }
static inline int exlog_cond_init(exlog_cond *c) { InitializeConditionVariable(c); return 0; }
static inline void exlog_cond_destroy(exlog_cond *c) { (void)c; }
static inline void exlog_cond_broadcast(exlog_cond *c) { WakeAllConditionVariable(c); }
/* Wait at most ms milliseconds; spurious wake-ups are the caller's to handle. */
static inline void exlog_cond_wait_ms(exlog_cond *c, exlog_mutex *m, int64_t ms) {
    SleepConditionVariableSRW(c, m, ms < 0 ? 0 : (DWORD)ms, 0);
}

typedef struct { void (*fn)(void *); void *arg; } exlog__trampoline_arg;
static inline unsigned __stdcall exlog__trampoline(void *p) {
    exlog__trampoline_arg a = *(exlog__trampoline_arg *)p;
    HeapFree(GetProcessHeap(), 0, p);
    a.fn(a.arg);
    return 0;
}
static inline int exlog_thread_start(exlog_thread *t, void (*fn)(void *), void *arg) {
    exlog__trampoline_arg *a = (exlog__trampoline_arg *)HeapAlloc(
        GetProcessHeap(), 0, sizeof(exlog__trampoline_arg));
    uintptr_t h;
    if (!a) return -1;
    a->fn = fn;
    a->arg = arg;
    h = _beginthreadex(NULL, 0, exlog__trampoline, a, 0, NULL);
    if (h == 0) { HeapFree(GetProcessHeap(), 0, a); return -1; }
    *t = (HANDLE)h;
    return 0;
}
static inline void exlog_thread_join(exlog_thread t) {
    WaitForSingleObject(t, INFINITE);
    CloseHandle(t);
}
#else
typedef pthread_mutex_t exlog_mutex;
typedef pthread_cond_t exlog_cond;
typedef pthread_t exlog_thread;

static inline int exlog_mutex_init(exlog_mutex *m) { return pthread_mutex_init(m, NULL); }
static inline void exlog_mutex_destroy(exlog_mutex *m) { pthread_mutex_destroy(m); }
static inline void exlog_mutex_lock(exlog_mutex *m) { pthread_mutex_lock(m); }
static inline void exlog_mutex_unlock(exlog_mutex *m) { pthread_mutex_unlock(m); }
static inline int exlog_cond_init(exlog_cond *c) {
#  if defined(__APPLE__)
    return pthread_cond_init(c, NULL);
#  else
    pthread_condattr_t a;
    int rc;
    if (pthread_condattr_init(&a)) return -1;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
#  endif
}
static inline void exlog_cond_destroy(exlog_cond *c) { pthread_cond_destroy(c); }
static inline void exlog_cond_broadcast(exlog_cond *c) { pthread_cond_broadcast(c); }
static inline void exlog_cond_wait_ms(exlog_cond *c, exlog_mutex *m, int64_t ms) {
    struct timespec ts;
    if (ms < 0) ms = 0;
#  if defined(__APPLE__)
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)((ms % 1000) * 1000000);
    pthread_cond_timedwait_relative_np(c, m, &ts);
#  else
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)((ms % 1000) * 1000000);
    if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(c, m, &ts);
#  endif
}

typedef struct { void (*fn)(void *); void *arg; } exlog__trampoline_arg;
static inline void *exlog__trampoline(void *p) {
    exlog__trampoline_arg a = *(exlog__trampoline_arg *)p;
    free(p);
    a.fn(a.arg);
    return NULL;
}
static inline int exlog_thread_start(exlog_thread *t, void (*fn)(void *), void *arg) {
    exlog__trampoline_arg *a = (exlog__trampoline_arg *)malloc(sizeof(exlog__trampoline_arg));
    if (!a) return -1;
    a->fn = fn;
    a->arg = arg;
    if (pthread_create(t, NULL, exlog__trampoline, a) != 0) { free(a); return -1; }
    return 0;
}
static inline void exlog_thread_join(exlog_thread t) { pthread_join(t, NULL); }
#endif

/* ---- file descriptors (CRT fds on Windows, shared with Python's os) ----- */
#ifdef _WIN32
#  define EXLOG_WRITE(fd, p, n) _write((fd), (p), (unsigned int)(n))
#  define EXLOG_FSYNC(fd) _commit(fd)
#  define EXLOG_TRUNCATE(fd, off) _chsize_s((fd), (__int64)(off))
#  define EXLOG_SEEK(fd, off) _lseeki64((fd), (__int64)(off), SEEK_SET)
#  define EXLOG_TOUCH(fd) _futime((fd), NULL)
#else
#  define EXLOG_WRITE(fd, p, n) write((fd), (p), (n))
#  define EXLOG_FSYNC(fd) fsync(fd)
#  define EXLOG_TRUNCATE(fd, off) ftruncate((fd), (off_t)(off))
#  define EXLOG_SEEK(fd, off) lseek((fd), (off_t)(off), SEEK_SET)
#  define EXLOG_TOUCH(fd) futimens((fd), NULL)
#endif

#endif /* EXLOG_PORT_H */
