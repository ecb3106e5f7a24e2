/* SPDX-License-Identifier: MIT */
/*
 * Memory, formatting, printk and warnings.
 *
 * kmalloc/kzalloc/kfree follow include/linux/slab.h and mm/slab_common.c: power-of-two sizes up
 * to a page are naturally aligned (the driver relies on a 4 KB kzalloc being page aligned);
 * kfree(NULL) does nothing. Every allocation is recorded with its call site. A freed block is
 * poisoned with 0x6b (include/linux/poison.h POISON_FREE) and kept in quarantine until exit,
 * so a use after free reads poison instead of reused memory, and a double free or a free of
 * an unknown pointer is reported as a BUG. Allocations outstanding at exit are leaks, each
 * reported with a short allocation stack: the call site and a few of its callers.
 */
#include "rt.h"

#ifdef KSHIM_ASAN
/* AddressSanitizer's interface: quarantined blocks become unaddressable. */
void __asan_poison_memory_region(void const volatile *addr, size_t size);
#endif

/*
 * How many frames of an allocation's stack are kept (the site and its callers), and how many
 * more the unwinder is asked for to reach the site (kshim_os_backtrace, this file's own frames
 * and, under a sanitizer, its backtrace interceptor). Every kmalloc-family allocation can
 * leak, so every one is unwound: a few frames keep that cheap.
 */
#define ALLOC_FRAMES 6
#define ALLOC_FRAMES_OWN 4

struct alloc_rec {
	struct alloc_rec *next;
	/* All records in allocation order, so reports do not depend on addresses. */
	struct alloc_rec *all_next;
	void *ptr;
	size_t size;
	void *site;
	/* The shim call made just before (the runtime function that allocated, if any). */
	const char *call;
	/* The allocation stack: the site first, then its callers (return addresses). */
	void *stack[ALLOC_FRAMES];
	u8 nstack;
	bool freed;
};

#define BUCKETS 1024
static struct alloc_rec *buckets[BUCKETS];
static struct alloc_rec *all_head;
static struct alloc_rec **all_tail = &all_head;

static unsigned int bucket_of(const void *p)
{
	return ((uintptr_t)p >> 4) % BUCKETS;
}

static struct alloc_rec *find(const void *p)
{
	for (struct alloc_rec *r = buckets[bucket_of(p)]; r; r = r->next)
		if (r->ptr == p && !r->freed)
			return r;
	for (struct alloc_rec *r = buckets[bucket_of(p)]; r; r = r->next)
		if (r->ptr == p)
			return r;
	return NULL;
}

extern char __executable_start[];

static unsigned long site_offset(const void *site)
{
	return (unsigned long)((const char *)site - __executable_start);
}

/*
 * The calling allocation's stack into r: the unwound frames from `site` (the allocator's
 * return address) outwards. When the unwinder did not pass through the site, the site alone.
 */
static void record_stack(struct alloc_rec *r, void *site)
{
	void *frames[ALLOC_FRAMES + ALLOC_FRAMES_OWN];
	int n = kshim_os_backtrace(frames, ALLOC_FRAMES + ALLOC_FRAMES_OWN);
	int from = -1;

	for (int i = 0; i < n && i <= ALLOC_FRAMES_OWN; i++) {
		if (frames[i] == site) {
			from = i;
			break;
		}
	}
	r->stack[0] = site;
	r->nstack = 1;
	if (from < 0)
		return;
	for (int i = from + 1; i < n && r->nstack < ALLOC_FRAMES; i++)
		r->stack[r->nstack++] = frames[i];
}

/* Fault injection: counts down to the allocation that fails. */
static u32 fail_countdown;

void kshim_fail_alloc(u32 n)
{
	fail_countdown = n;
}

static void *alloc(size_t size, gfp_t flags, void *site)
{
	const char *call = kshim_last_call;
	size_t align = 16;
	struct alloc_rec *r;
	void *p;

	KSHIM_CALL("kmalloc");
	if (fail_countdown && --fail_countdown == 0) {
		kshim_event(EV_NOTE, "injected allocation failure: %zu bytes at exe+%#lx", size,
			    site_offset(site));
		return NULL;
	}
	if (size && (size & (size - 1)) == 0)
		align = size > PAGE_SIZE ? PAGE_SIZE : (size < 16 ? 16 : size);
	p = kshim_os_alloc(size, align);
	r = kshim_os_alloc(sizeof(*r), 8);
	if (!p || !r)
		kshim_internal_error("out of memory");
	memset(p, 0, size);
	r->ptr = p;
	r->size = size;
	r->site = site;
	r->call = call;
	record_stack(r, site);
	r->freed = false;
	r->next = buckets[bucket_of(p)];
	buckets[bucket_of(p)] = r;
	r->all_next = NULL;
	*all_tail = r;
	all_tail = &r->all_next;
	return p;
}

void *kmalloc(size_t size, gfp_t flags)
{
	return alloc(size, flags, __builtin_return_address(0));
}

void *kzalloc(size_t size, gfp_t flags)
{
	return alloc(size, flags, __builtin_return_address(0));
}

void kfree(const void *ptr)
{
	struct alloc_rec *r;

	KSHIM_CALL("kfree");
	if (!ptr)
		return;
	r = find(ptr);
	if (!r) {
		kshim_event(EV_BUG, "kfree of a pointer never allocated: %p (from exe+%#lx)", ptr,
			    site_offset(__builtin_return_address(0)));
		return;
	}
	if (r->freed) {
		kshim_event(EV_BUG, "double free of %zu bytes allocated at exe+%#lx (from exe+%#lx)",
			    r->size, site_offset(r->site),
			    site_offset(__builtin_return_address(0)));
		return;
	}
	memset(r->ptr, 0x6b, r->size);
	r->freed = true;
#ifdef KSHIM_ASAN
	__asan_poison_memory_region(r->ptr, r->size);
#endif
}

/* EV_LEAK_STACK for r: each frame as exe+0xOFF, the site first. */
static void report_stack(const struct alloc_rec *r)
{
	char text[ALLOC_FRAMES * 24 + 1];
	size_t used = 0;

	text[0] = 0;
	for (int i = 0; i < r->nstack && used < sizeof(text); i++)
		used += snprintf(text + used, sizeof(text) - used, "%sexe+%#lx", i ? " " : "",
				 site_offset(r->stack[i]));
	kshim_event(EV_LEAK_STACK, "%s", text);
}

u32 kshim_leak_report(void)
{
	u32 leaks = 0;

	for (struct alloc_rec *r = all_head; r; r = r->all_next) {
		if (r->freed)
			continue;
		leaks++;
		kshim_event(EV_LEAK, "%zu bytes allocated after %s at exe+%#lx", r->size,
			    r->call ? r->call : "?", site_offset(r->site));
		report_stack(r);
	}
	return leaks;
}

/*
 * lib/vsprintf.c, as far as the driver formats: the C conversions, passed one at a time to
 * the C library, plus the kernel's %pUL (a GUID, upper case, first three fields
 * little-endian). Other %p extensions print the pointer.
 */
int kshim_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	size_t out = 0;

	if (size == 0)
		return 0;
	buf[0] = 0;
	while (*fmt) {
		char spec[32];
		char piece[128];
		size_t n = 0;
		int len_mod = 0; /* 0 int, 1 long, 2 long long, 3 size_t */

		if (*fmt != '%') {
			if (out + 1 < size)
				buf[out] = *fmt;
			out++;
			fmt++;
			continue;
		}
		spec[n++] = *fmt++;
		while (*fmt && n < sizeof(spec) - 4 && __builtin_strchr("-+ #0123456789.", *fmt))
			spec[n++] = *fmt++;
		while (*fmt == 'l' || *fmt == 'z' || *fmt == 'h') {
			if (*fmt == 'l')
				len_mod = len_mod ? 2 : 1;
			else if (*fmt == 'z')
				len_mod = 3;
			if (n < sizeof(spec) - 4)
				spec[n++] = *fmt;
			fmt++;
		}
		spec[n++] = *fmt;
		spec[n] = 0;
		switch (*fmt) {
		case 'd': case 'i': case 'u': case 'x': case 'X': case 'o': case 'c':
			if (len_mod == 2)
				snprintf(piece, sizeof(piece), spec, va_arg(ap, long long));
			else if (len_mod == 1 || len_mod == 3)
				snprintf(piece, sizeof(piece), spec, va_arg(ap, long));
			else
				snprintf(piece, sizeof(piece), spec, va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);

			snprintf(piece, sizeof(piece), spec, s ? s : "(null)");
			break;
		}
		case 'p':
			if (fmt[1] == 'U' && (fmt[2] == 'L' || fmt[2] == 'l' || fmt[2] == 'B' ||
					      fmt[2] == 'b')) {
				const u8 *g = va_arg(ap, const u8 *);
				bool upper = fmt[2] == 'L' || fmt[2] == 'B';
				bool le = fmt[2] == 'L' || fmt[2] == 'l';
				static const u8 le_order[16] = { 3, 2, 1, 0, 5, 4, 7, 6,
								 8, 9, 10, 11, 12, 13, 14, 15 };
				const char *hex = upper ? "0123456789ABCDEF" : "0123456789abcdef";
				size_t k = 0;

				for (int i = 0; i < 16; i++) {
					u8 b = g[le ? le_order[i] : i];

					if (i == 4 || i == 6 || i == 8 || i == 10)
						piece[k++] = '-';
					piece[k++] = hex[b >> 4];
					piece[k++] = hex[b & 15];
				}
				piece[k] = 0;
				fmt += 2;
			} else {
				snprintf(piece, sizeof(piece), "%p", va_arg(ap, void *));
				while (__builtin_isalnum(fmt[1]))
					fmt++;
			}
			break;
		case '%':
			piece[0] = '%';
			piece[1] = 0;
			break;
		default:
			snprintf(piece, sizeof(piece), "%%%c", *fmt ? *fmt : '?');
			break;
		}
		if (*fmt)
			fmt++;
		for (const char *p = piece; *p; p++) {
			if (out + 1 < size)
				buf[out] = *p;
			out++;
		}
	}
	buf[out < size ? out : size - 1] = 0;
	return out;
}

char *kasprintf(gfp_t gfp, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = kshim_vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(tmp))
		kshim_internal_error("kasprintf result too long");
	s = alloc(n + 1, gfp, __builtin_return_address(0));
	if (s)
		memcpy(s, tmp, n + 1);
	return s;
}

static void log_text(int level, const char *prefix, const char *fmt, va_list ap)
{
	struct kshim_wbuf w;
	char text[512];
	size_t plen = strlen(prefix);

	if (fmt[0] == KERN_SOH[0] && fmt[1]) {
		level = fmt[1] - '0';
		fmt += 2;
	}
	memcpy(text, prefix, plen);
	kshim_vsnprintf(text + plen, sizeof(text) - plen, fmt, ap);
	kshim_wbuf_init(&w);
	kshim_put_u32(&w, level);
	kshim_put_u32(&w, kshim_current);
	kshim_put_str(&w, text);
	kshim_send_frame(G_LOG, &w);
}

int printk(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_text(4, "", fmt, ap);
	va_end(ap);
	return 0;
}

#define DEV_PRINT(fn, level) \
	void fn(const struct device *dev, const char *fmt, ...) \
	{ \
		va_list ap; \
		va_start(ap, fmt); \
		log_text(level, "hv_pci: ", fmt, ap); \
		va_end(ap); \
	}
DEV_PRINT(_dev_err, 3)
DEV_PRINT(_dev_warn, 4)
DEV_PRINT(_dev_info, 6)

void kshim_warn(const char *file, int line, const char *cond)
{
	kshim_event(EV_WARN, "WARNING at %s:%d: %s", file, line, cond);
}

void refcount_warn_saturate(refcount_t *r, enum refcount_saturation_type t)
{
	static const char *const what[] = {
		"saturated; leaking memory", "saturated; leaking memory",
		"addition on 0; use-after-free", "underflow; use-after-free",
		"decrement hit 0; leaking memory",
	};

	kshim_event(EV_WARN, "refcount_t: %s", (unsigned int)t < 5 ? what[t] : "?");
}
