/* SPDX-License-Identifier: MIT */
/* The runtime's only file built against the C library: see kshim_os.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <ucontext.h>
#include <unistd.h>

#include "kshim_os.h"
#include "proto.h"

void kshim_os_init(void)
{
	static char *const argv[] = { "kshim-guest", NULL };
	int persona = personality(0xffffffff);

	if (persona == -1 || (persona & ADDR_NO_RANDOMIZE))
		return;
	if (personality(persona | ADDR_NO_RANDOMIZE) == -1)
		return;
	execv("/proc/self/exe", argv);
	/* Not fatal: the run stays deterministic in its schedule, only addresses vary. */
}

void *kshim_os_alloc(unsigned long size, unsigned long align)
{
	void *p = NULL;

	if (align < sizeof(void *))
		align = sizeof(void *);
	if (posix_memalign(&p, align, size ? size : 1) != 0)
		return NULL;
	return p;
}

void kshim_os_free(void *ptr)
{
	free(ptr);
}

int kshim_os_vsnprintf(char *buf, unsigned long size, const char *fmt, va_list ap)
{
	return vsnprintf(buf, size, fmt, ap);
}

void kshim_os_write(const void *buf, unsigned long len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(STDOUT_FILENO, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(KSHIM_EXIT_PIPE);
		p += n;
		len -= (unsigned long)n;
	}
}

void kshim_os_read(void *buf, unsigned long len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(STDIN_FILENO, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(KSHIM_EXIT_PIPE);
		p += n;
		len -= (unsigned long)n;
	}
}

void kshim_os_debug(const char *text)
{
	fputs(text, stderr);
}

void kshim_os_exit(int status)
{
	_exit(status);
}

/* ---- the baton ---- */
#define MAX_THREADS 256

struct os_thread {
	pthread_cond_t cv;
	void (*fn)(void *arg);
	void *arg;
	int id;
};

static pthread_mutex_t baton_lock = PTHREAD_MUTEX_INITIALIZER;
static struct os_thread threads[MAX_THREADS];
static int baton_holder;

static struct os_thread *thread_of(int id)
{
	if (id < 0 || id >= MAX_THREADS) {
		fprintf(stderr, "kshim: context id %d out of range\n", id);
		_exit(KSHIM_EXIT_INTERNAL);
	}
	return &threads[id];
}

void kshim_os_baton_init(void)
{
	for (int i = 0; i < MAX_THREADS; i++)
		pthread_cond_init(&threads[i].cv, NULL);
	baton_holder = 0;
}

static void wait_for_baton(int id)
{
	while (baton_holder != id)
		pthread_cond_wait(&thread_of(id)->cv, &baton_lock);
}

static void *thread_main(void *opaque)
{
	struct os_thread *t = opaque;

	pthread_mutex_lock(&baton_lock);
	wait_for_baton(t->id);
	pthread_mutex_unlock(&baton_lock);
	t->fn(t->arg);
	fprintf(stderr, "kshim: context %d returned\n", t->id);
	_exit(KSHIM_EXIT_INTERNAL);
}

void kshim_os_thread_start(int id, void (*fn)(void *arg), void *arg)
{
	struct os_thread *t = thread_of(id);
	pthread_attr_t attr;
	pthread_t th;

	t->fn = fn;
	t->arg = arg;
	t->id = id;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 1 << 20);
	if (pthread_create(&th, &attr, thread_main, t) != 0) {
		fprintf(stderr, "kshim: cannot start a thread\n");
		_exit(KSHIM_EXIT_INTERNAL);
	}
	pthread_attr_destroy(&attr);
}

void kshim_os_baton_pass(int from, int to)
{
	if (from == to)
		return;
	pthread_mutex_lock(&baton_lock);
	baton_holder = to;
	pthread_cond_signal(&thread_of(to)->cv);
	wait_for_baton(from);
	pthread_mutex_unlock(&baton_lock);
}

int kshim_os_backtrace(void **frames, int max)
{
	return backtrace(frames, max);
}

/* ---- crash capture ---- */
static const volatile int *crash_ctx;
static const char *const volatile *crash_call;

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put_hex(char *p, uint64_t v)
{
	for (int i = 0; i < 16; i++)
		p[i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xf];
}

int main(void);

/* The faulting instruction's address, from the signal's machine context. */
static uint64_t fault_pc(const void *uc)
{
	const ucontext_t *u = uc;

	if (!u)
		return 0;
#if defined(__x86_64__)
	return (uint64_t)u->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
	return (uint64_t)u->uc_mcontext.pc;
#else
	return 0;
#endif
}

/*
 * "kshim: frame pc=P" per frame of the crashed thread's stack, innermost first (this handler
 * and the signal trampoline included): the controller symbolises them like the fault's pc.
 * backtrace() was called once at install time, so its unwinder is loaded and it does not
 * allocate here.
 */
static void write_backtrace(void)
{
	char line[] = "kshim: frame pc=0x0000000000000000\n";
	void *frames[48];
	int n = backtrace(frames, 48);

	for (int i = 0; i < n; i++) {
		put_hex(line + 18, (uint64_t)(uintptr_t)frames[i]);
		(void)!write(STDERR_FILENO, line, sizeof(line) - 1);
	}
}

static void crash_handler(int sig, siginfo_t *info, void *uc)
{
	/* Only async-signal-safe calls from here on. */
	/*
	 * "kshim: fault pc=P addr=A main=M" on stderr: the controller symbolises P (relative to
	 * main, whose link-time address it reads from the executable) to tell a crash in the
	 * driver from one in the runtime.
	 */
	char line[] = "kshim: fault pc=0x0000000000000000 addr=0x0000000000000000 "
		      "main=0x0000000000000000\n";
	unsigned char frame[8 + 8 + 128];
	const char *call = crash_call ? *crash_call : NULL;
	size_t n = 0;

	put_hex(line + 18, fault_pc(uc));
	put_hex(line + 42, info ? (uint64_t)(uintptr_t)info->si_addr : 0);
	put_hex(line + 66, (uint64_t)(uintptr_t)&main);
	(void)!write(STDERR_FILENO, line, sizeof(line) - 1);
	write_backtrace();
	if (!call)
		call = "?";
	while (call[n] && n < 128)
		n++;
	put32(frame, (uint32_t)(8 + n));
	put32(frame + 4, G_CRASH);
	put32(frame + 8, (uint32_t)sig);
	put32(frame + 12, crash_ctx ? (uint32_t)*crash_ctx : 0);
	memcpy(frame + 16, call, n);
	(void)!write(STDOUT_FILENO, frame, 16 + n);
	_exit(128 + sig);
}

void kshim_os_install_crash_handler(const volatile int *current_ctx,
				    const char *const volatile *last_call)
{
	static char altstack[64 * 1024];
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
	struct sigaction sa;
	const int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };

	void *warm[1];

	/* Loads the unwinder now, so that the crash handler's backtrace does not allocate. */
	(void)backtrace(warm, 1);
	crash_ctx = current_ctx;
	crash_call = last_call;
	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = crash_handler;
	sa.sa_flags = SA_ONSTACK | SA_RESETHAND | SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}
