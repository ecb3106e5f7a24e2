/* SPDX-License-Identifier: MIT */
/*
 * The deterministic scheduler. Every kernel context (the process context, each channel's
 * tasklet, each workqueue's worker) is an OS thread, but exactly one holds the baton. At every
 * scheduling point the running context reports the runnable set to the controller, which
 * answers with the context to run (possibly after changing the world: a host packet, a
 * rescind, a step of virtual time). A blocked context waits on a predicate; it is runnable
 * when the predicate holds or its virtual deadline has passed. The same controller answers
 * give the same interleaving.
 */
#include "rt.h"

volatile int kshim_current;
const char *volatile kshim_last_call;
u64 kshim_now_ns;

static struct kshim_ctx ctxs[KSHIM_MAX_CTX];
static int nctx;

struct kshim_ctx *kshim_ctx(int id)
{
	if (id < 0 || id >= nctx)
		return NULL;
	return &ctxs[id];
}

struct kshim_ctx *kshim_self(void)
{
	return &ctxs[kshim_current];
}

static void announce(struct kshim_ctx *c)
{
	struct kshim_wbuf w;

	kshim_wbuf_init(&w);
	kshim_put_u32(&w, c->id);
	kshim_put_u32(&w, c->kind);
	kshim_put_str(&w, c->name);
	kshim_send_frame(G_CTX, &w);
}

static struct kshim_ctx *new_ctx(int kind, const char *name)
{
	struct kshim_ctx *c;

	if (nctx >= KSHIM_MAX_CTX)
		kshim_internal_error("too many contexts");
	c = &ctxs[nctx];
	memset(c, 0, sizeof(*c));
	c->id = nctx++;
	c->kind = kind;
	snprintf(c->name, sizeof(c->name), "%s", name);
	c->exists = true;
	announce(c);
	return c;
}

/* Context 0 is the calling (main) thread. */
void kshim_sched_init(void)
{
	kshim_os_baton_init();
	kshim_os_install_crash_handler(&kshim_current, &kshim_last_call);
	new_ctx(CTX_PROCESS, "process");
	kshim_current = 0;
}

int kshim_ctx_create(int kind, const char *name, void (*fn)(void *arg), void *arg)
{
	struct kshim_ctx *c = new_ctx(kind, name);

	kshim_os_thread_start(c->id, fn, arg);
	return c->id;
}

static bool runnable(const struct kshim_ctx *c)
{
	if (!c->exists || c->finished)
		return false;
	if (!c->ready)
		return true;
	if (c->ready(c->ready_arg))
		return true;
	return c->deadline_ns && kshim_now_ns >= c->deadline_ns;
}

static u64 next_deadline(void)
{
	u64 next = 0;

	for (int i = 0; i < nctx; i++) {
		const struct kshim_ctx *c = &ctxs[i];

		if (!c->exists || c->finished || !c->ready || !c->deadline_ns)
			continue;
		if (c->deadline_ns > kshim_now_ns && (!next || c->deadline_ns < next))
			next = c->deadline_ns;
	}
	return next;
}

static void switch_to(int id)
{
	int me = kshim_current;

	if (id == me)
		return;
	kshim_current = id;
	kshim_os_baton_pass(me, id);
	/* Someone passed the baton back: kshim_current == me again. */
}

extern char __executable_start[];

/* How many of the offering context's callers a scheduling point reports. */
#define SCHED_FRAMES 12

void kshim_sched(int point)
{
	/*
	 * Where the offering context is: its callers' return addresses (relative to the
	 * executable's start; the frames of kshim_os_backtrace and of this function left out,
	 * except that a sanitizer's backtrace interceptor adds one) and the last shim call, so that a replay can say which kernel function reached the
	 * point and through what.
	 */
	void *frames[SCHED_FRAMES + 2];
	int nframes = kshim_os_backtrace(frames, SCHED_FRAMES + 2);
	const char *call = kshim_last_call;

	for (;;) {
		struct kshim_wbuf w;
		struct kshim_frame f;
		u32 n = 0;

		kshim_wbuf_init(&w);
		kshim_put_u32(&w, point);
		kshim_put_u32(&w, kshim_current);
		kshim_put_u64(&w, kshim_now_ns);
		kshim_put_u64(&w, next_deadline());
		for (int i = 0; i < nctx; i++)
			n += runnable(&ctxs[i]);
		kshim_put_u32(&w, n);
		for (int i = 0; i < nctx; i++)
			if (runnable(&ctxs[i]))
				kshim_put_u32(&w, i);
		kshim_put_u32(&w, nframes > 2 ? (u32)(nframes - 2) : 0);
		for (int i = 2; i < nframes; i++)
			kshim_put_u64(&w, (u64)((char *)frames[i] - __executable_start));
		kshim_put_str(&w, call ? call : "");
		kshim_send_frame(G_SCHED, &w);

		kshim_recv_frame(&f);
		if (f.type == C_RUN) {
			u32 id = kshim_get_u32(&f, 0);
			struct kshim_ctx *c = kshim_ctx(id);

			kshim_frame_free(&f);
			if (!c || !runnable(c))
				kshim_protocol_error("C_RUN names a context that is not runnable");
			switch_to(id);
			return;
		}
		kshim_apply_controller_frame(&f);
		kshim_frame_free(&f);
	}
}

bool kshim_block(int point, kshim_ready_fn ready, void *arg, u64 deadline_ns, bool spinning)
{
	struct kshim_ctx *self = kshim_self();

	for (;;) {
		if (!spinning && self->atomic && !ready(arg))
			kshim_event(EV_BUG, "scheduling while atomic in %s", kshim_last_call);
		self->ready = ready;
		self->ready_arg = arg;
		self->deadline_ns = deadline_ns;
		kshim_sched(point);
		self->ready = NULL;
		self->ready_arg = NULL;
		self->deadline_ns = 0;
		if (ready(arg))
			return true;
		if (deadline_ns && kshim_now_ns >= deadline_ns)
			return false;
	}
}

static bool never(void *arg)
{
	return false;
}

void kshim_ctx_exit(void)
{
	struct kshim_ctx *self = kshim_self();

	self->finished = true;
	self->ready = never;
	kshim_sched(SP_IDLE);
	kshim_internal_error("a finished context was scheduled");
}

void kshim_atomic_enter(void)
{
	kshim_self()->atomic++;
}

void kshim_atomic_exit(void)
{
	struct kshim_ctx *self = kshim_self();

	if (self->atomic <= 0)
		kshim_internal_error("unbalanced atomic section");
	self->atomic--;
}

/*
 * ---- per-CPU data (include/linux/percpu-defs.h): one copy per context ----
 * A per-CPU object of `size` bytes is laid out as KSHIM_MAX_CTX consecutive copies; the
 * running context's copy is its id-th. The preemption check follows lib/smp_processor_id.c:
 * only an atomic context (spinlock held, interrupts off) stays on its CPU.
 */
void *kshim_this_cpu_ptr(const void *ptr, size_t size)
{
	KSHIM_CALL("this_cpu_ptr");
	if (!kshim_self()->atomic)
		kshim_event(EV_BUG, "using this_cpu_ptr() in preemptible code: context %d",
			    kshim_current);
	return (char *)ptr + size * (size_t)kshim_current;
}

void kshim_event(u32 kind, const char *fmt, ...)
{
	struct kshim_wbuf w;
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	kshim_os_vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	kshim_wbuf_init(&w);
	kshim_put_u32(&w, kind);
	kshim_put_u32(&w, kshim_current);
	kshim_put_str(&w, text);
	kshim_send_frame(G_EVENT, &w);
}
