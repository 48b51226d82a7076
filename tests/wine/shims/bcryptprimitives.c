/*
 * bcryptprimitives.dll for the Wine test prefix. Wine 8.0 has none, and `cryptography`'s
 * Rust extension (through Rust's standard library) imports ProcessPrng from it, so it will
 * not load. ProcessPrng fills a buffer from the system's preferred random number generator;
 * this asks Wine's bcrypt.dll for exactly that. Test equipment, never shipped.
 */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T size)
{
    while (size > 0) {
        ULONG chunk = size > 0x40000000 ? 0x40000000 : (ULONG)size;
        if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG)))
            return FALSE;
        data += chunk;
        size -= chunk;
    }
    return TRUE;
}
