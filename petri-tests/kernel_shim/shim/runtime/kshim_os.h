/* SPDX-License-Identifier: MIT */
/*
 * The runtime's narrow interface to the host operating system (threads, the baton, the
 * controller pipe, raw memory, crash reporting). Implemented in os.c, the only runtime file
 * compiled against the C library's headers; everything else is compiled -nostdinc against the
 * shim, so kernel and libc declarations never meet. Plain C types only.
 */
#ifndef KSHIM_OS_H
#define KSHIM_OS_H

/*
 * Called first: re-executes the process once with address-space randomisation off (where
 * the system allows it), so that heap and stack addresses, and with them 5.10's raw-pointer
 * transaction ids, repeat from run to run.
 */
void kshim_os_init(void);

/* ---- memory from the C library (the runtime's own bookkeeping, never the driver's) ---- */
void *kshim_os_alloc(unsigned long size, unsigned long align);
void kshim_os_free(void *ptr);

/* ---- formatting: the C library's vsnprintf ---- */
int kshim_os_vsnprintf(char *buf, unsigned long size, const char *fmt, __builtin_va_list ap);

/* ---- the controller pipe: stdin and stdout carry length-prefixed frames ---- */
/* Writes all of buf or exits the process. */
void kshim_os_write(const void *buf, unsigned long len);
/* Reads exactly len bytes or exits the process (the controller went away). */
void kshim_os_read(void *buf, unsigned long len);
/* Diagnostics to stderr. */
void kshim_os_debug(const char *text);
/* The calling thread's return addresses, innermost first (at most max); returns how many. */
int kshim_os_backtrace(void **frames, int max);
__attribute__((noreturn)) void kshim_os_exit(int status);

/*
 * ---- threads and the baton ----
 * Each kernel context is an OS thread; exactly one holds the baton and runs. The calling
 * (main) thread holds it first, as context 0.
 */
void kshim_os_baton_init(void);
/* Starts a thread for context id that waits for the baton, then calls fn(arg). */
void kshim_os_thread_start(int id, void (*fn)(void *arg), void *arg);
/* Gives the baton from context `from` to context `to` and waits until `from` gets it back. */
void kshim_os_baton_pass(int from, int to);

/*
 * ---- crash capture ----
 * On SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT the handler writes a crash frame naming the
 * signal, the running context and the last shim call (read through these pointers), then
 * exits with 128 + signal.
 */
void kshim_os_install_crash_handler(const volatile int *current_ctx,
				    const char *const volatile *last_call);

#endif /* KSHIM_OS_H */
