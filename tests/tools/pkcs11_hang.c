/*
 * A PKCS#11 module for tests/pkcs11_hang.rs: SoftHSM2 (or the module named
 * by REAL_MODULE) with calls that hang on demand, as a partitioned network
 * HSM or a wedged smart-card daemon does.
 *
 * While the file HANG_DIR "/load" exists, C_Login and C_FindObjectsInit
 * (the calls of a key load) do not return; while HANG_DIR "/sign" exists,
 * C_SignInit (a handshake's signature) does not. Removing the file lets
 * the call go on to the real module. Each hang gives up after 120 s, so a
 * test that dies cannot leave a worker stuck for good.
 *
 * Built by the test: gcc -shared -fPIC -I/usr/include/p11-kit-1
 *   -DHANG_DIR='"..."' -DREAL_MODULE='"..."' -o libpkcs11_hang.so
 *   pkcs11_hang.c -ldl   (the header: Debian's libp11-kit-dev)
 */
#include <dlfcn.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#ifndef HANG_DIR
#error "define HANG_DIR, the directory of the load and sign flag files"
#endif
#ifndef REAL_MODULE
#define REAL_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;

static void hang_while(const char *flag)
{
    for (int i = 0; i < 1200 && access(flag, F_OK) == 0; i++)
        usleep(100 * 1000);
}

static CK_RV hang_login(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                        CK_ULONG len)
{
    hang_while(HANG_DIR "/load");
    return real->C_Login(s, user, pin, len);
}

static CK_RV hang_find_init(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG n)
{
    hang_while(HANG_DIR "/load");
    return real->C_FindObjectsInit(s, tmpl, n);
}

static CK_RV hang_sign_init(CK_SESSION_HANDLE s, CK_MECHANISM_PTR mech, CK_OBJECT_HANDLE key)
{
    hang_while(HANG_DIR "/sign");
    return real->C_SignInit(s, mech, key);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (real == NULL) {
        void *h = dlopen(REAL_MODULE, RTLD_NOW | RTLD_LOCAL);
        if (h == NULL)
            return CKR_GENERAL_ERROR;
        CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR) =
            (CK_RV (*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList");
        CK_FUNCTION_LIST_PTR list = NULL;
        if (get == NULL || get(&list) != CKR_OK || list == NULL)
            return CKR_GENERAL_ERROR;
        memcpy(&wrapped, list, sizeof wrapped);
        wrapped.C_Login = hang_login;
        wrapped.C_FindObjectsInit = hang_find_init;
        wrapped.C_SignInit = hang_sign_init;
        real = list;
    }
    *out = &wrapped;
    return CKR_OK;
}
