// Published STUN test vectors, as bytes. RFC 5769 §2.1-§2.4 (Copyright (c) 2010 IETF
// Trust and the persons identified as the document authors) and RFC 8489 Appendix B.1
// with its erratum 6268. Transcribed from the RFC text; each vector carries an HMAC
// and most a CRC-32, so a transcription slip fails the tests that use it.

/** Hex as the RFCs print it (spaces, line breaks) to bytes. */
export function hex(text: string): Buffer {
  const digits = text.replace(/[^0-9a-fA-F]/g, '');
  if (digits.length % 2 !== 0) throw new Error('odd number of hex digits');
  return Buffer.from(digits, 'hex');
}

/** RFC 5769 §2.1-§2.3 share this transaction id; §2.4 has its own. */
export const RFC5769_TRANSACTION_ID = hex('b7 e7 a7 01 bc 34 d6 86 fa 87 df ae');
export const RFC5769_LONG_TERM_TRANSACTION_ID = hex('78 ad 34 33 c6 ad 72 c0 29 da 41 2e');

/** RFC 5769 §2.1: short-term password (the key is these bytes). */
export const RFC5769_SHORT_TERM_PASSWORD = 'VOkJxbRl1RmTxUk/WvJxBt';
export const RFC5769_SHORT_TERM_USERNAME = 'evtj:h6vY';

/** RFC 5769 §2.4 / RFC 8489 B.1 long-term credentials. */
export const RFC5769_LONG_TERM_USERNAME = '\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9';
/** "The<U+00AD>M<U+00AA>tr<U+2168>" before SASLprep / OpaqueString ... */
export const RFC5769_LONG_TERM_PASSWORD_RAW = 'The\u00ADM\u00AAtr\u2168';
/** ... and after. */
export const RFC5769_LONG_TERM_PASSWORD = 'TheMatrIX';
export const RFC5769_LONG_TERM_NONCE = 'f//499k954d6OL34oL9FSTvy64sA';
export const RFC5769_LONG_TERM_REALM = 'example.org';

/** ICE attributes the §2.1 request carries; the codec has no names for them. */
export const ATTR_PRIORITY = 0x0024;
export const ATTR_ICE_CONTROLLED = 0x8029;

/** RFC 5769 §2.1 Sample Request. SOFTWARE "STUN test client", USERNAME padded with 0x20. */
export const RFC5769_SAMPLE_REQUEST = hex(`
  00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
  00 24 00 04 6e 00 01 ff
  80 29 00 08 93 2f f9 b1 51 26 3b 36
  00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
  00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
  80 28 00 04 e5 7a 3b cf`);

/** RFC 5769 §2.2 Sample IPv4 Response: XOR-MAPPED-ADDRESS 192.0.2.1:32853, SOFTWARE padded with 0x20. */
export const RFC5769_SAMPLE_IPV4_RESPONSE = hex(`
  01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 08 00 01 a1 47 e1 12 a6 43
  00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
  80 28 00 04 c0 7d 4c 96`);

/** RFC 5769 §2.3 Sample IPv6 Response: XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853. */
export const RFC5769_SAMPLE_IPV6_RESPONSE = hex(`
  01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
  80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
  00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
  00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
  80 28 00 04 c8 fb 0b 4c`);

/** RFC 5769 §2.4 Sample Request with Long-Term Authentication (zero padding, no FINGERPRINT). */
export const RFC5769_SAMPLE_LONG_TERM_REQUEST = hex(`
  00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
  00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
  00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
  00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
  00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66`);

/** RFC 8489 Appendix B.1 nonce: the "obMatJos2" cookie, "AAAC" security feature bits, then the RFC 5769 nonce. */
export const RFC8489_B1_NONCE = 'obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA';

/** RFC 8489 Appendix B.1 exactly as published (February 2020); inconsistent, see rfc8489-b1.test.ts. */
export const RFC8489_B1_PUBLISHED = hex(`
  00 01 00 9c 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
  00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
              24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
  00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
              34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39
              46 53 54 76 79 36 34 73 41 00 00 00
  00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
  00 1c 00 20 e4 68 6c 8f 0e de b5 90 13 e0 70 90 01 0a 93 ef
              cc bc cc 54 4c 0a 45 d9 f8 30 aa 6d 6f 73 5a 01`);

/** RFC 8489 Appendix B.1 as corrected by erratum 6268: length 0x90, PASSWORD-ALGORITHM SHA-256 added, MI-SHA256 recomputed. */
export const RFC8489_B1_ERRATUM_6268 = hex(`
  00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
  00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
              24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
  00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
              34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39
              46 53 54 76 79 36 34 73 41 00 00 00
  00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
  00 1d 00 04 00 02 00 00
  00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
              13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65`);
