/* SPDX-License-Identifier: MIT */
/* Frame encoding and decoding for the controller pipe (see proto.h). */
#include "rt.h"

void kshim_wbuf_init(struct kshim_wbuf *w)
{
	w->len = 0;
}

static void put(struct kshim_wbuf *w, const void *p, u32 n)
{
	if (w->len + n > sizeof(w->buf))
		kshim_internal_error("frame too large");
	memcpy(w->buf + w->len, p, n);
	w->len += n;
}

void kshim_put_u16(struct kshim_wbuf *w, u16 v)
{
	u8 b[2] = { v & 0xff, v >> 8 };

	put(w, b, 2);
}

void kshim_put_u32(struct kshim_wbuf *w, u32 v)
{
	u8 b[4];

	for (int i = 0; i < 4; i++)
		b[i] = v >> (8 * i);
	put(w, b, 4);
}

void kshim_put_u64(struct kshim_wbuf *w, u64 v)
{
	u8 b[8];

	for (int i = 0; i < 8; i++)
		b[i] = v >> (8 * i);
	put(w, b, 8);
}

void kshim_put_bytes(struct kshim_wbuf *w, const void *p, u32 n)
{
	put(w, p, n);
}

void kshim_put_str(struct kshim_wbuf *w, const char *s)
{
	u32 n = strlen(s);

	if (w->len + n > sizeof(w->buf))
		n = sizeof(w->buf) - w->len;
	put(w, s, n);
}

void kshim_send_frame(u32 type, const struct kshim_wbuf *w)
{
	struct kshim_wbuf hdr;

	kshim_wbuf_init(&hdr);
	kshim_put_u32(&hdr, w ? w->len : 0);
	kshim_put_u32(&hdr, type);
	kshim_os_write(hdr.buf, hdr.len);
	if (w && w->len)
		kshim_os_write(w->buf, w->len);
}

static u32 le32(const u8 *b)
{
	return b[0] | (u32)b[1] << 8 | (u32)b[2] << 16 | (u32)b[3] << 24;
}

#define KSHIM_MAX_FRAME (1u << 20)

void kshim_recv_frame(struct kshim_frame *f)
{
	u8 hdr[8];

	kshim_os_read(hdr, sizeof(hdr));
	f->len = le32(hdr);
	f->type = le32(hdr + 4);
	if (f->len > KSHIM_MAX_FRAME)
		kshim_protocol_error("frame too large");
	f->data = kshim_os_alloc(f->len ? f->len : 1, 8);
	if (!f->data)
		kshim_internal_error("out of memory");
	if (f->len)
		kshim_os_read(f->data, f->len);
}

void kshim_frame_free(struct kshim_frame *f)
{
	kshim_os_free(f->data);
	f->data = NULL;
}

static void need(const struct kshim_frame *f, u32 off, u32 n)
{
	if (off + n < off || off + n > f->len)
		kshim_protocol_error("frame too short");
}

u16 kshim_get_u16(const struct kshim_frame *f, u32 off)
{
	need(f, off, 2);
	return f->data[off] | (u16)f->data[off + 1] << 8;
}

u32 kshim_get_u32(const struct kshim_frame *f, u32 off)
{
	need(f, off, 4);
	return le32(f->data + off);
}

u64 kshim_get_u64(const struct kshim_frame *f, u32 off)
{
	need(f, off, 8);
	return le32(f->data + off) | (u64)le32(f->data + off + 4) << 32;
}

void kshim_protocol_error(const char *what)
{
	kshim_os_debug("kshim: protocol error: ");
	kshim_os_debug(what);
	kshim_os_debug("\n");
	kshim_os_exit(KSHIM_EXIT_PROTOCOL);
}

void kshim_internal_error(const char *what)
{
	kshim_os_debug("kshim: internal error: ");
	kshim_os_debug(what);
	kshim_os_debug("\n");
	kshim_os_exit(KSHIM_EXIT_INTERNAL);
}

u64 kshim_call_value(u32 type, const struct kshim_wbuf *w)
{
	struct kshim_frame f;
	u64 v;

	kshim_send_frame(type, w);
	kshim_recv_frame(&f);
	if (f.type != C_VALUE)
		kshim_protocol_error("expected C_VALUE");
	v = kshim_get_u64(&f, 0);
	kshim_frame_free(&f);
	return v;
}
