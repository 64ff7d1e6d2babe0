/*
 * TEST-ONLY shim for Wine 8, never shipped: Wine 8's bcryptprimitives.dll
 * lacks ProcessPrng, which Rust's standard library calls for randomness on
 * Windows 10+. This DLL provides it by forwarding to RtlGenRandom
 * (advapi32!SystemFunction036), which Wine implements. installer/smoke-wine.sh
 * builds it with mingw and puts it in its throwaway Wine prefix only.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
