/* SPDX-License-Identifier: MIT */
/*
 * Spinlocks, mutexes, completions, tasklets, workqueues and delays on top of the
 * deterministic scheduler. Each follows the kernel semantics named at its definition; none
 * adds an ordering or a lock the kernel does not have.
 */
#include "rt.h"

/*
 * ---- spinlocks (kernel/locking/spinlock.c) ----
 * The simulation interleaves contexts as if each had its own CPU, so a context may be
 * scheduled away while holding a spinlock (another CPU runs meanwhile); anyone else taking the
 * lock spins, i.e. is not runnable until it is free. Holding one makes the holder atomic:
 * sleeping then is a BUG. Taking a lock is a scheduling point.
 */
static bool spin_free(void *arg)
{
	return !((spinlock_t *)arg)->locked;
}

unsigned long _raw_spin_lock_irqsave(spinlock_t *lock)
{
	KSHIM_CALL("spin_lock_irqsave");
	if (lock->locked && lock->owner == kshim_current)
		kshim_event(EV_BUG, "spinlock recursion: context %d takes a lock it holds",
			    kshim_current);
	kshim_block(SP_SPIN_LOCK, spin_free, lock, 0, true);
	lock->locked = 1;
	lock->owner = kshim_current;
	kshim_atomic_enter();
	return 0;
}

void _raw_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	KSHIM_CALL("spin_unlock_irqrestore");
	if (!lock->locked || lock->owner != kshim_current) {
		kshim_event(EV_BUG, "spin_unlock of a lock context %d does not hold",
			    kshim_current);
		return;
	}
	lock->locked = 0;
	lock->owner = -1;
	kshim_atomic_exit();
}

/*
 * ---- local interrupt disabling (arch/x86/include/asm/irqflags.h) ----
 * The flags are the previous interrupt state (X86_EFLAGS_IF when they were on), so nested
 * pairs restore correctly; turning them off makes the context atomic until they are back on.
 */
#define KSHIM_EFLAGS_IF 0x200UL

unsigned long arch_local_irq_save(void)
{
	struct kshim_ctx *self = kshim_self();

	KSHIM_CALL("local_irq_save");
	if (self->irqs_off)
		return 0;
	self->irqs_off = true;
	kshim_atomic_enter();
	return KSHIM_EFLAGS_IF;
}

void arch_local_irq_restore(unsigned long flags)
{
	struct kshim_ctx *self = kshim_self();

	KSHIM_CALL("local_irq_restore");
	if (!(flags & KSHIM_EFLAGS_IF))
		return;
	if (!self->irqs_off) {
		kshim_event(EV_BUG, "local_irq_restore in context %d without a save",
			    kshim_current);
		return;
	}
	self->irqs_off = false;
	kshim_atomic_exit();
}

/* ---- mutexes (kernel/locking/mutex.c): a sleeping lock, owner-checked ---- */
static bool mutex_free(void *arg)
{
	return !((struct mutex *)arg)->locked;
}

void __mutex_init(struct mutex *lock, const char *name, struct lock_class_key *key)
{
	lock->locked = 0;
	lock->owner = -1;
	lock->name = name;
}

void mutex_lock(struct mutex *lock)
{
	KSHIM_CALL("mutex_lock");
	if (lock->locked && lock->owner == kshim_current)
		kshim_event(EV_BUG, "deadlock: context %d takes mutex %s it holds",
			    kshim_current, lock->name ? lock->name : "?");
	kshim_block(SP_MUTEX_LOCK, mutex_free, lock, 0, false);
	lock->locked = 1;
	lock->owner = kshim_current;
}

void mutex_unlock(struct mutex *lock)
{
	KSHIM_CALL("mutex_unlock");
	if (!lock->locked || lock->owner != kshim_current) {
		kshim_event(EV_BUG, "mutex_unlock of %s by context %d, which does not hold it",
			    lock->name ? lock->name : "?", kshim_current);
		return;
	}
	lock->locked = 0;
	lock->owner = -1;
	kshim_sched(SP_MUTEX_UNLOCK);
}

/* drivers/pci/probe.c: the global rescan/remove mutex. */
static struct mutex pci_rescan_remove_lock = { 0, -1, "pci_rescan_remove_lock" };

void pci_lock_rescan_remove(void)
{
	mutex_lock(&pci_rescan_remove_lock);
}

void pci_unlock_rescan_remove(void)
{
	mutex_unlock(&pci_rescan_remove_lock);
}

/* ---- completions (kernel/sched/completion.c) ---- */
static bool completion_done(void *arg)
{
	return ((struct completion *)arg)->done > 0;
}

void complete(struct completion *x)
{
	KSHIM_CALL("complete");
	if (x->done != ~0u)
		x->done++;
	kshim_sched(SP_COMPLETE);
}

void wait_for_completion(struct completion *x)
{
	KSHIM_CALL("wait_for_completion");
	kshim_block(SP_WAIT, completion_done, x, 0, false);
	x->done--;
}

unsigned long wait_for_completion_timeout(struct completion *x, unsigned long timeout)
{
	u64 deadline = kshim_now_ns + (u64)timeout * NS_PER_JIFFY;
	u64 left;

	KSHIM_CALL("wait_for_completion_timeout");
	if (!kshim_block(SP_WAIT, completion_done, x, deadline, false))
		return 0;
	x->done--;
	left = deadline > kshim_now_ns ? (deadline - kshim_now_ns) / NS_PER_JIFFY : 0;
	return left ? left : 1;
}

bool try_wait_for_completion(struct completion *x)
{
	KSHIM_CALL("try_wait_for_completion");
	kshim_sched(SP_WAIT);
	if (!x->done)
		return false;
	x->done--;
	return true;
}

/* ---- delays (include/linux/delay.h): busy waiting lets virtual time and others move ---- */
void udelay(unsigned long usecs)
{
	KSHIM_CALL("udelay");
	kshim_now_ns += (u64)usecs * 1000;
	kshim_sched(SP_UDELAY);
}

/*
 * ---- tasklets (include/linux/interrupt.h, kernel/softirq.c) ----
 * tasklet_disable raises the disable count, then waits until a running callback has returned
 * (5.10: a spin; 6.1: it may sleep, hence tasklet_disable_in_atomic, which spins).
 * t->kshim points at the running flag the channel's tasklet context maintains (vmbus.c).
 */
static bool tasklet_idle(void *arg)
{
	const bool *running = ((struct tasklet_struct *)arg)->kshim;

	return !running || !*running;
}

static void disable(struct tasklet_struct *t, bool spinning)
{
	t->disable_count++;
	kshim_block(SP_TASKLET_DISABLE, tasklet_idle, t, 0, spinning);
}

void tasklet_disable(struct tasklet_struct *t)
{
	KSHIM_CALL("tasklet_disable");
	disable(t, KSHIM_KVER < 601);
}

void tasklet_disable_in_atomic(struct tasklet_struct *t)
{
	KSHIM_CALL("tasklet_disable_in_atomic");
	disable(t, true);
}

void tasklet_enable(struct tasklet_struct *t)
{
	KSHIM_CALL("tasklet_enable");
	if (t->disable_count <= 0) {
		kshim_event(EV_BUG, "tasklet_enable of an enabled tasklet");
		return;
	}
	t->disable_count--;
	kshim_sched(SP_TASKLET_ENABLE);
}

/*
 * ---- workqueues (kernel/workqueue.c) ----
 * Every workqueue the driver makes is ordered (alloc_ordered_workqueue: max_active 1): one
 * worker context runs its items one at a time in queueing order. queue_work on a pending item
 * returns false; the item's pending bit is cleared just before its function runs, so it may
 * requeue itself. flush_workqueue waits for every item queued before the call;
 * destroy_workqueue drains (items queued from outside meanwhile are a WARN) and frees.
 */
struct workqueue_struct {
	char name[32];
	struct list_head items;
	int worker;
	bool busy;
	/*
	 * The function the worker is running (NULL when idle): kept by value, as a work function
	 * may free its own item (6.1's pci_devices_present_work frees its hv_dr_work).
	 */
	work_func_t running;
	/* The next live workqueue (kshim_work_describe walks them). */
	struct workqueue_struct *next_live;
	bool draining;
	bool worker_exited;
	u64 queued;
	u64 done;
};

static struct workqueue_struct *live_wqs;

static void describe_func(char *buf, size_t size, size_t *at, const char *what,
			  work_func_t func)
{
	if (*at >= size)
		return;
	*at += snprintf(buf + *at, size - *at, " %s=%#llx", what,
			(unsigned long long)(uintptr_t)func);
}

/*
 * Every live workqueue's running item and queued items, by function address (the driver's
 * work functions are static; the controller symbolises them against the executable).
 */
void kshim_work_describe(char *buf, size_t size)
{
	size_t at = 0;

	if (!size)
		return;
	buf[0] = 0;
	for (struct workqueue_struct *wq = live_wqs; wq; wq = wq->next_live) {
		if (wq->running)
			describe_func(buf, size, &at, "running", wq->running);
		for (struct list_head *e = wq->items.next; e != &wq->items; e = e->next)
			describe_func(buf, size, &at, "queued",
				      container_of(e, struct work_struct, entry)->func);
	}
}

static bool wq_has_work(void *arg)
{
	struct workqueue_struct *wq = arg;

	return !list_empty(&wq->items) || (wq->draining && !wq->busy);
}

static void worker_main(void *arg)
{
	struct workqueue_struct *wq = arg;

	for (;;) {
		struct work_struct *work;

		kshim_block(SP_IDLE, wq_has_work, wq, 0, false);
		if (list_empty(&wq->items)) {
			wq->worker_exited = true;
			kshim_ctx_exit();
		}
		work = list_first_entry(&wq->items, struct work_struct, entry);
		list_del(&work->entry);
		INIT_LIST_HEAD(&work->entry);
		work->pending = 0;
		wq->busy = true;
		wq->running = work->func;
		work->func(work);
		wq->running = NULL;
		wq->busy = false;
		wq->done++;
	}
}

struct workqueue_struct *alloc_workqueue(const char *fmt, unsigned int flags, int max_active,
					 ...)
{
	struct workqueue_struct *wq;
	char name[40];
	va_list ap;

	KSHIM_CALL("alloc_workqueue");
	if (max_active != 1 || !(flags & __WQ_ORDERED))
		kshim_event(EV_NOTE, "unordered workqueue modelled as ordered");
	wq = kzalloc(sizeof(*wq), GFP_KERNEL);
	if (!wq)
		return NULL;
	va_start(ap, max_active);
	kshim_vsnprintf(wq->name, sizeof(wq->name), fmt, ap);
	va_end(ap);
	INIT_LIST_HEAD(&wq->items);
	snprintf(name, sizeof(name), "wq:%s", wq->name);
	wq->worker = kshim_ctx_create(CTX_WORKER, name, worker_main, wq);
	wq->next_live = live_wqs;
	live_wqs = wq;
	return wq;
}

bool queue_work(struct workqueue_struct *wq, struct work_struct *work)
{
	KSHIM_CALL("queue_work");
	if (work->pending)
		return false;
	if (wq->draining && kshim_current != wq->worker)
		kshim_event(EV_WARN, "queue_work on workqueue %s while it is being destroyed",
			    wq->name);
	work->pending = 1;
	list_add_tail(&work->entry, &wq->items);
	wq->queued++;
	kshim_sched(SP_QUEUE_WORK);
	return true;
}

struct flush_target {
	struct workqueue_struct *wq;
	u64 target;
};

static bool flushed(void *arg)
{
	struct flush_target *f = arg;

	return f->wq->done >= f->target;
}

void flush_workqueue(struct workqueue_struct *wq)
{
	struct flush_target f = { wq, wq->queued };

	KSHIM_CALL("flush_workqueue");
	if (kshim_current == wq->worker) {
		kshim_event(EV_BUG, "flush_workqueue of %s from its own worker: deadlock",
			    wq->name);
		return;
	}
	kshim_block(SP_FLUSH, flushed, &f, 0, false);
}

static bool worker_gone(void *arg)
{
	return ((struct workqueue_struct *)arg)->worker_exited;
}

void destroy_workqueue(struct workqueue_struct *wq)
{
	KSHIM_CALL("destroy_workqueue");
	if (kshim_current == wq->worker) {
		kshim_event(EV_BUG, "destroy_workqueue of %s from its own worker", wq->name);
		return;
	}
	wq->draining = true;
	kshim_block(SP_FLUSH, worker_gone, wq, 0, false);
	for (struct workqueue_struct **pp = &live_wqs; *pp; pp = &(*pp)->next_live)
		if (*pp == wq) {
			*pp = wq->next_live;
			break;
		}
	kfree(wq);
}
